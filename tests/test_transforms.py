"""Transformation robustness (issue 7, part 1): Lucid's standard set as one resampling."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cnnlens.synthesize.transforms import (
    LucidDraw,
    compose,
    jitter,
    pad,
    random_rotate,
    random_scale,
    resample,
    standard,
)


def _smooth_image(size: int = 64) -> torch.Tensor:
    torch.manual_seed(0)
    return F.interpolate(torch.rand(2, 3, 8, 8), size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def _in_turn(size: int, gen: torch.Generator, strength: float) -> list:
    """Lucid's five transforms run one after another, drawing the same random numbers as :func:`standard`."""
    k = size / 224 * strength
    return [pad(round(12 * k)), jitter(round(8 * k), gen),
            random_scale([1 + 0.1 * strength * (i - 5) / 5 for i in range(11)], gen),
            random_rotate([10 * strength * (i - 10) / 10 for i in range(21)], gen), jitter(round(4 * k), gen)]


def test_one_resampling_has_the_geometry_of_the_five_transforms_in_turn():
    image = _smooth_image()
    fused_gen, turn_gen = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    fused, in_turn = compose(standard(64, fused_gen, 2.0)), compose(_in_turn(64, turn_gen, 2.0))
    for _ in range(20):
        a, b = fused(image), in_turn(image)
        assert a.shape == b.shape
        # one bilinear interpolation instead of two: equal up to the second interpolation's blur
        assert float((a - b).abs().mean()) < 0.01 and float((a - b).abs().amax()) < 0.25


def test_pure_translation_is_exact_and_strength_zero_is_the_identity():
    image = _smooth_image()
    assert torch.equal(compose(standard(64, torch.Generator().manual_seed(0), 0.0))(image), image)
    draw = LucidDraw(pad=5, jitter=3, offset=(2, 0), scale=1.0, angle=0.0, jitter2=2, offset2=(0, 1))
    padded = F.pad(image, (5,) * 4, value=0.5)[..., 2:2 + 71, 0:71]
    assert torch.allclose(resample(image, draw), padded[..., 0:69, 1:70], atol=1e-5)


def test_output_size_gradients_determinism_and_device():
    image = _smooth_image(96).requires_grad_(True)
    out = compose(standard(96, torch.Generator().manual_seed(5), 1.5, out=(64, 48)))(image)
    assert out.shape == (2, 3, 64, 48) and out.device == image.device
    (grad,) = torch.autograd.grad(out.square().sum(), image)
    assert float(grad.abs().sum()) > 0
    again = compose(standard(96, torch.Generator().manual_seed(5), 1.5, out=(64, 48)))(image)
    assert torch.equal(out, again)
