// Colormaps and value scaling, pure functions (tested with node's test runner).

const STOPS = {
  magma: [[0, 0, 4], [28, 16, 68], [79, 18, 123], [129, 37, 129], [181, 54, 122], [229, 80, 100], [251, 135, 97], [254, 194, 135], [252, 253, 191]],
  viridis: [[68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142], [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37]],
  gray: [[0, 0, 0], [255, 255, 255]],
  jet: [[0, 0, 131], [0, 60, 170], [5, 255, 255], [255, 255, 0], [250, 0, 0], [128, 0, 0]],
  RdBu_r: [[5, 48, 97], [33, 102, 172], [67, 147, 195], [146, 197, 222], [209, 229, 240], [247, 247, 247], [253, 219, 199], [244, 165, 130], [214, 96, 77], [178, 24, 43], [103, 0, 31]],
};

export const COLORMAPS = Object.keys(STOPS);

/** A 256×3 lookup table (Uint8ClampedArray of length 768) for a named colormap. */
export function lut(name) {
  const stops = STOPS[name] || STOPS.magma;
  const table = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const t = (i / 255) * (stops.length - 1);
    const k = Math.min(Math.floor(t), stops.length - 2);
    const f = t - k;
    for (let c = 0; c < 3; c++) table[i * 3 + c] = Math.round(stops[k][c] * (1 - f) + stops[k + 1][c] * f);
  }
  return table;
}

/** The display range of a map: [lo, hi]. Signed maps are symmetric around 0; vmax > 0 fixes the scale. */
export function range(values, signed, vmax) {
  let lo = Infinity, hi = -Infinity, amax = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (!Number.isFinite(v)) continue;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
    const a = Math.abs(v);
    if (a > amax) amax = a;
  }
  if (!Number.isFinite(lo)) return [0, 1];
  if (signed) {
    const s = vmax > 0 ? vmax : amax || 1;
    return [-s, s];
  }
  if (vmax > 0) return [Math.min(lo, 0), vmax];
  return hi > lo ? [lo, hi] : [lo, lo + 1];
}

/** Map float values to 0..255 indices within [lo, hi]. */
export function toIndices(values, lo, hi) {
  const out = new Uint8Array(values.length);
  const scale = 255 / (hi - lo || 1);
  for (let i = 0; i < values.length; i++) {
    const v = Math.round((values[i] - lo) * scale);
    out[i] = v < 0 ? 0 : v > 255 ? 255 : v;
  }
  return out;
}

/** A typed-array view over a DataView/ArrayBuffer received from Python, respecting byteOffset/byteLength. */
export function view(data, Type) {
  if (!data) return new Type(0);
  if (data instanceof ArrayBuffer) return new Type(data);
  const { buffer, byteOffset, byteLength } = data;
  if (byteOffset % Type.BYTES_PER_ELEMENT === 0) {
    return new Type(buffer, byteOffset, byteLength / Type.BYTES_PER_ELEMENT);
  }
  return new Type(buffer.slice(byteOffset, byteOffset + byteLength));
}

/** Blend RGB image bytes with a colormapped heat map into RGBA pixels. */
export function blend(rgb, indices, table, opacity, n) {
  const out = new Uint8ClampedArray(n * 4);
  for (let i = 0; i < n; i++) {
    const k = indices ? indices[i] * 3 : 0;
    for (let c = 0; c < 3; c++) {
      const base = rgb ? rgb[i * 3 + c] : 0;
      const heat = indices ? table[k + c] : base;
      out[i * 4 + c] = rgb ? base * (1 - opacity) + heat * opacity : heat;
    }
    out[i * 4 + 3] = 255;
  }
  return out;
}
