// Scatter plot helpers for the "scatter" panel kind, pure functions (tested with node's test runner).

/**
 * Canvas coordinates of N points given as x, y pairs (Float32Array of 2N): fitted into a size×size box with
 * `pad` pixels of margin, aspect ratio kept, centred, y pointing up. Returns a Float32Array of 2N.
 */
export function fitPoints(points, size, pad) {
  const n = Math.floor(points.length / 2);
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (let i = 0; i < n; i++) {
    const x = points[2 * i], y = points[2 * i + 1];
    if (!Number.isFinite(x) || !Number.isFinite(y)) continue;
    if (x < x0) x0 = x;
    if (x > x1) x1 = x;
    if (y < y0) y0 = y;
    if (y > y1) y1 = y;
  }
  const out = new Float32Array(2 * n);
  if (!Number.isFinite(x0)) return out.fill(size / 2);
  const inner = size - 2 * pad;
  const span = Math.max(x1 - x0, y1 - y0) || 1;
  const scale = inner / span;
  const ox = pad + (inner - (x1 - x0) * scale) / 2, oy = pad + (inner - (y1 - y0) * scale) / 2;
  for (let i = 0; i < n; i++) {
    out[2 * i] = ox + (points[2 * i] - x0) * scale;
    out[2 * i + 1] = size - (oy + (points[2 * i + 1] - y0) * scale);
  }
  return out;
}

/** The index of the point (canvas coordinates, 2N) nearest to (x, y) within `radius` pixels, or -1. */
export function nearest(coords, x, y, radius) {
  let best = -1, bestD = radius * radius;
  for (let i = 0; i < coords.length / 2; i++) {
    const dx = coords[2 * i] - x, dy = coords[2 * i + 1] - y;
    const d = dx * dx + dy * dy;
    if (d <= bestD) {
      best = i;
      bestD = d;
    }
  }
  return best;
}

/** RGBA pixels (Uint8ClampedArray of t·t·4) of thumbnail `i` in an atlas of N t×t RGB thumbnails, or null. */
export function atlasTile(atlas, t, i) {
  const tile = t * t * 3;
  if (i < 0 || (i + 1) * tile > atlas.length) return null;
  const out = new Uint8ClampedArray(t * t * 4);
  for (let p = 0; p < t * t; p++) {
    out[4 * p] = atlas[i * tile + 3 * p];
    out[4 * p + 1] = atlas[i * tile + 3 * p + 1];
    out[4 * p + 2] = atlas[i * tile + 3 * p + 2];
    out[4 * p + 3] = 255;
  }
  return out;
}

/** Point indices by group value (Map, groups in ascending order; −1 = unknown), so each group is one path. */
export function byGroup(groups, offset, n) {
  const found = new Map();
  for (let i = 0; i < n; i++) {
    const g = groups[offset + i];
    if (!found.has(g)) found.set(g, []);
    found.get(g).push(i);
  }
  return new Map([...found.entries()].sort((a, b) => a[0] - b[0]));
}
