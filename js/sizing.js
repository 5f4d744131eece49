// How large a canvas of w×h pixels is shown for a panel of `size` CSS pixels (its longer side).

/**
 * The display scale. A picture (`whole` false) fills the panel. A grid of tiles with 1 px gaps and
 * pixel-font captions (`whole` true) is drawn with pixelated rendering, where a fractional scale makes
 * some source pixels one screen pixel wider than others (gaps that come and go, uneven letters): it is
 * shown at a whole multiple of its size instead (the nearest, at least 1), or at 1 when that is within 15%
 * of the panel; a grid much larger than the panel is shrunk, smoothly (see `smoothShrink`).
 */
export function displayScale(size, w, h, whole = false) {
  const scale = size / Math.max(w, h, 1);
  if (!whole) return scale;
  if (scale >= 1) return Math.max(1, Math.round(scale));
  return scale >= 0.85 ? 1 : scale;
}

/** Whether a grid shown at `scale` is shrunk, so that it is drawn smoothly rather than by dropping rows. */
export function smoothShrink(scale, whole) {
  return whole && scale < 1;
}
