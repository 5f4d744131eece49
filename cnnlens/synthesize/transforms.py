"""Transformation robustness: random, differentiable tensor→tensor transforms, composed.

Each transform is a closure ``B×C×H×W → B×C×H'×W'`` that draws its randomness
from a private ``torch.Generator`` (the global RNG is never touched) and runs
on the tensor's own device with plain PyTorch ops (``F.pad``, slicing,
``F.interpolate``, ``F.grid_sample``), so gradients flow through all of them.
:func:`standard` is Lucid's set (pad 12, jitter 8, scale 0.90–1.10, rotate
±10°, jitter 4 at 224 px), scaled with the image size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Transform = Callable[[torch.Tensor], torch.Tensor]


def _choice(options: Sequence, gen: torch.Generator):
    return options[int(torch.randint(len(options), (1,), generator=gen))]


def pad(width: int, value: float = 0.5) -> Transform:
    """Pad every side by ``width`` pixels of ``value`` (gray by default)."""
    def transform(x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (width,) * 4, mode="constant", value=value) if width > 0 else x
    return transform


def jitter(distance: int, gen: torch.Generator) -> Transform:
    """Crop ``distance`` pixels at a random offset (a random translation by up to ``distance``)."""
    def transform(x: torch.Tensor) -> torch.Tensor:
        if distance <= 0 or min(x.shape[-2:]) <= distance:
            return x
        dy, dx = (int(v) for v in torch.randint(distance + 1, (2,), generator=gen))
        h, w = x.shape[-2:]
        return x[..., dy:h - distance + dy, dx:w - distance + dx]
    return transform


def random_scale(scales: Sequence[float], gen: torch.Generator) -> Transform:
    """Resize by a factor drawn from ``scales`` (bilinear)."""
    def transform(x: torch.Tensor) -> torch.Tensor:
        scale = float(_choice(scales, gen))
        if scale == 1.0:
            return x
        size = [max(int(round(s * scale)), 1) for s in x.shape[-2:]]
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return transform


def random_rotate(degrees: Sequence[float], gen: torch.Generator) -> Transform:
    """Rotate about the centre by an angle drawn from ``degrees`` (edges extended)."""
    def transform(x: torch.Tensor) -> torch.Tensor:
        angle = math.radians(float(_choice(degrees, gen)))
        if angle == 0.0:
            return x
        cos, sin = math.cos(angle), math.sin(angle)
        theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return transform


def compose(transforms: Sequence[Transform]) -> Transform:
    """Apply ``transforms`` in order."""
    def transform(x: torch.Tensor) -> torch.Tensor:
        for t in transforms:
            x = t(x)
        return x
    return transform


def standard(size: int, gen: torch.Generator, strength: float = 1.0) -> list[Transform]:
    """Lucid's standard transforms for a ``size``-pixel image, magnitudes times ``strength`` (1 = Lucid's)."""
    k = size / 224 * strength
    spread = 0.1 * strength
    return [
        pad(round(12 * k)),
        jitter(round(8 * k), gen),
        random_scale([1 + spread * (i - 5) / 5 for i in range(11)], gen),
        random_rotate([10 * strength * (i - 10) / 10 for i in range(21)], gen),
        jitter(round(4 * k), gen),
    ]
