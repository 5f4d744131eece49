"""Transformation robustness: random, differentiable tensor→tensor transforms, composed.

Each transform is a closure ``B×C×H×W → B×C×H'×W'`` that draws its randomness
from a private ``torch.Generator`` (the global RNG is never touched) and runs
on the tensor's own device with plain PyTorch ops (``F.pad``, slicing,
``F.interpolate``, ``F.grid_sample``), so gradients flow through all of them.
:func:`standard` is Lucid's set (pad 12, jitter 8, scale 0.90–1.10, rotate
±10°, jitter 4 at 224 px), scaled with the image size, as one resampling:
the five draws compose into a single affine map that also resizes to the
model's input, so a step pays one ``grid_sample`` instead of five passes over
the image (the same geometry as running them in turn; one interpolation
instead of three).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class LucidDraw:
    """One draw of Lucid's standard transforms: pad, crop offsets (y, x), scale, angle (degrees), crop offsets."""

    pad: int
    jitter: int
    offset: tuple[int, int]
    scale: float
    angle: float
    jitter2: int
    offset2: tuple[int, int]


def lucid_theta(draw: LucidDraw, size: tuple[int, int], out: tuple[int, int]) -> torch.Tensor:
    """The 2×3 ``affine_grid`` matrix that maps the output of ``draw`` (resized to ``out``) to the input.

    Running pad → crop → scale → rotate → crop → resize in turn on an H×W image is, in continuous
    coordinates about the image centre, x = R(θ)·(z + c₂)/s + c₁, where z spans the last crop
    (half-extent L₂/2 along each axis), c₁, c₂ are the crops' centre offsets and s the scale.
    """
    h, w = size
    angle = math.radians(draw.angle)
    cos, sin = math.cos(angle), math.sin(angle)
    first_h, first_w = h + 2 * draw.pad - draw.jitter, w + 2 * draw.pad - draw.jitter
    scaled_h, scaled_w = max(round(first_h * draw.scale), 1), max(round(first_w * draw.scale), 1)
    sx, sy = first_w / scaled_w, first_h / scaled_h  # 1 / the realised scale along x and y
    half_x, half_y = (scaled_w - draw.jitter2) / 2, (scaled_h - draw.jitter2) / 2  # last crop's half-extent
    c1x, c1y = draw.offset[1] - draw.jitter / 2, draw.offset[0] - draw.jitter / 2
    c2x, c2y = draw.offset2[1] - draw.jitter2 / 2, draw.offset2[0] - draw.jitter2 / 2
    # x = diag(sx, sy)·R(θ)·(diag(half)·u + c₂) + c₁, then divided by the input's half-size
    rows = [(sx * cos, -sx * sin, sx * (cos * c2x - sin * c2y) + c1x, w / 2),
            (sy * sin, sy * cos, sy * (sin * c2x + cos * c2y) + c1y, h / 2)]
    return torch.tensor([[a * half_x / n, b * half_y / n, t / n] for a, b, t, n in rows])


def standard(size: int, gen: torch.Generator, strength: float = 1.0,
             out: tuple[int, int] | None = None) -> list[Transform]:
    """Lucid's standard transforms for a ``size``-pixel image, magnitudes times ``strength`` (1 = Lucid's),
    as one transform whose output is resized to ``out`` (default: the size the steps in turn would give)."""
    if strength == 0:
        return []
    k = size / 224 * strength
    spread = 0.1 * strength
    pad_width, jitter1, jitter2 = round(12 * k), round(8 * k), round(4 * k)
    scales = [1 + spread * (i - 5) / 5 for i in range(11)]
    angles = [10 * strength * (i - 10) / 10 for i in range(21)]

    def transform(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        draw = LucidDraw(pad_width, jitter1, tuple(int(v) for v in torch.randint(jitter1 + 1, (2,), generator=gen)),
                         float(_choice(scales, gen)), float(_choice(angles, gen)), jitter2,
                         tuple(int(v) for v in torch.randint(jitter2 + 1, (2,), generator=gen)))
        return resample(x, draw, out)
    return [transform]


def resample(x: torch.Tensor, draw: LucidDraw, out: tuple[int, int] | None = None) -> torch.Tensor:
    """``x`` through ``draw`` in one bilinear resampling; outside the image is gray, as :func:`pad` makes it."""
    h, w = x.shape[-2:]
    if out is None:
        scaled = [max(round((v + 2 * draw.pad - draw.jitter) * draw.scale), 1) for v in (h, w)]
        out = (scaled[0] - draw.jitter2, scaled[1] - draw.jitter2)
    theta = lucid_theta(draw, (h, w), tuple(out)).to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta.expand(len(x), 2, 3), [len(x), x.shape[1], *out], align_corners=False)
    return F.grid_sample(x - 0.5, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 0.5
