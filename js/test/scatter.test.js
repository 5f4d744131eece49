import { test } from "node:test";
import assert from "node:assert/strict";
import { atlasTile, byGroup, fitPoints, nearest } from "../scatter.js";

test("fitPoints keeps the aspect ratio, centres the short side and points y up", () => {
  const c = fitPoints(new Float32Array([0, 0, 2, 1, 1, 0.5]), 100, 10);
  assert.deepEqual([...c], [10, 70, 90, 30, 50, 50]);
});

test("fitPoints survives one point, equal points and non-finite values", () => {
  assert.deepEqual([...fitPoints(new Float32Array([3, 3]), 50, 5)], [25, 25]);  // centred
  const c = fitPoints(new Float32Array([NaN, 1, 0, 0, 1, 1]), 20, 0);
  assert.deepEqual([...c.slice(2)], [0, 20, 20, 0]);
  assert.deepEqual([...fitPoints(new Float32Array([NaN, NaN]), 40, 2)], [20, 20]);
});

test("nearest finds the closest point within the radius, else -1", () => {
  const coords = new Float32Array([0, 0, 10, 10, 12, 10]);
  assert.equal(nearest(coords, 11.4, 10, 3), 2);
  assert.equal(nearest(coords, 10.4, 10, 3), 1);
  assert.equal(nearest(coords, 5, 5, 3), -1);
  assert.equal(nearest(new Float32Array(0), 0, 0, 3), -1);
});

test("atlasTile cuts one RGB thumbnail out as RGBA", () => {
  const atlas = new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24]);
  assert.deepEqual([...atlasTile(atlas, 2, 1)], [13, 14, 15, 255, 16, 17, 18, 255, 19, 20, 21, 255, 22, 23, 24, 255]);
  assert.equal(atlasTile(atlas, 2, 2), null);
  assert.equal(atlasTile(atlas, 2, -1), null);
});

test("byGroup lists points per group in ascending group order", () => {
  const groups = new Int32Array([9, 9, 9, 2, -1, 2, 0, 0, 0]);
  const found = byGroup(groups, 3, 3);
  assert.deepEqual([...found.keys()], [-1, 2]);
  assert.deepEqual(found.get(2), [0, 2]);
});
