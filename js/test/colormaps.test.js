import { test } from "node:test";
import assert from "node:assert/strict";
import { lut, range, toIndices, view, blend } from "../colormaps.js";

test("lut has 256 entries and runs from the first to the last stop", () => {
  const t = lut("gray");
  assert.equal(t.length, 768);
  assert.deepEqual([...t.slice(0, 3)], [0, 0, 0]);
  assert.deepEqual([...t.slice(765)], [255, 255, 255]);
});

test("signed range is symmetric and vmax fixes it", () => {
  assert.deepEqual(range(new Float32Array([-1, 3]), true, 0), [-3, 3]);
  assert.deepEqual(range(new Float32Array([-1, 3]), true, 5), [-5, 5]);
  assert.deepEqual(range(new Float32Array([2, 4]), false, 0), [2, 4]);
  assert.deepEqual(range(new Float32Array([NaN, 1, 1]), false, 0), [1, 2]);
});

test("indices clamp to 0..255", () => {
  assert.deepEqual([...toIndices(new Float32Array([-5, 0, 0.5, 1, 9]), 0, 1)], [0, 0, 128, 255, 255]);
});

test("view respects byteOffset and byteLength", () => {
  const buffer = new ArrayBuffer(16);
  new Float32Array(buffer).set([1, 2, 3, 4]);
  const dv = new DataView(buffer, 4, 8);
  assert.deepEqual([...view(dv, Float32Array)], [2, 3]);
  const odd = new DataView(new Uint8Array([9, 0, 0, 128, 63]).buffer, 1, 4);
  assert.deepEqual([...view(odd, Float32Array)], [1]);
});

test("blend mixes image and heat by opacity", () => {
  const px = blend(new Uint8Array([100, 100, 100]), new Uint8Array([255]), lut("gray"), 0.5, 1);
  assert.deepEqual([...px], [178, 178, 178, 255]);
});
