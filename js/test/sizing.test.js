import { test } from "node:test";
import assert from "node:assert/strict";
import { displayScale, smoothShrink } from "../sizing.js";

test("a picture fills the panel, whatever the factor", () => {
  assert.equal(displayScale(300, 64, 64), 300 / 64);
  assert.equal(displayScale(300, 224, 112), 300 / 224);
});

test("a grid is shown at a whole multiple of its pixels, or shrunk smoothly when far too large", () => {
  assert.equal(displayScale(576, 384, 480, true), 1);  // 1.2: the filters grid, shown as it is
  assert.equal(displayScale(384, 49, 49, true), 8);  // 7.84 → 8
  assert.equal(displayScale(384, 392, 392, true), 1);  // 0.98: within 15%, not resampled
  assert.equal(displayScale(192, 7, 7, true), 27);  // a zoomed 7×7 kernel: 27 screen pixels each
  const shrunk = displayScale(300, 1000, 600, true);
  assert.equal(shrunk, 0.3);
  assert.ok(smoothShrink(shrunk, true) && !smoothShrink(1, true) && !smoothShrink(0.3, false));
});
