"""Procedural shapes dataset: the embedded default's data, generated offline.

Each image is 64×64 RGB in [0, 1]: one labelled shape (random colour, size,
position, rotation) on a textured background, and for a share of images a
smaller distractor shape of another class. Colour never identifies the class,
so a model must look at form. Every image comes with the boolean mask of its
labelled object, which lets tests play the "pointing game" and reproduce
Zeiler & Fergus' occlusion label-map experiment. Everything is deterministic
given the seed: image ``i`` of a dataset depends only on ``(seed, i)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "cross", "ring", "hexagon", "heart",
)
IMAGE_SIZE = 64
SUPERSAMPLE = 2  # render at 2× and average: anti-aliased edges


def _inside(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether points (u, v), in units of the shape's radius, lie inside the shape."""
    r = np.hypot(u, v)
    theta = np.arctan2(v, u)
    if kind == "circle":
        return r <= 1.0
    if kind == "ring":
        return (r <= 1.0) & (r >= 0.55)
    if kind in ("square", "triangle", "hexagon"):
        n = {"square": 4, "triangle": 3, "hexagon": 6}[kind]
        sector = 2 * np.pi / n
        apothem = {"square": 0.78, "triangle": 0.55, "hexagon": 0.9}[kind]
        local = np.mod(theta, sector) - sector / 2
        return r * np.cos(local) <= apothem
    if kind == "star":
        sector = 2 * np.pi / 5
        local = np.abs(np.mod(theta + np.pi / 2, sector) - sector / 2) / (sector / 2)
        radius = 0.42 + 0.58 * (1 - local) ** 1.6
        return r <= radius
    if kind == "cross":
        arm, half = 0.32, 1.0
        return ((np.abs(u) <= arm) & (np.abs(v) <= half)) | (
            (np.abs(v) <= arm) & (np.abs(u) <= half)
        )
    if kind == "heart":
        x, y = u * 1.15, -v * 1.15 + 0.15
        return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0
    raise ValueError(f"Unknown shape kind {kind!r}. Valid kinds: {', '.join(CLASSES)}.")


def _shape_mask(kind: str, cy: float, cx: float, radius: float, angle: float) -> np.ndarray:
    """Anti-aliased coverage (float in [0, 1]) of one shape on the image grid.

    Only the shape's bounding window is rasterised, which keeps a 64×64 image
    around a millisecond.
    """
    coverage = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
    reach = radius * 1.5 + 1
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 1, IMAGE_SIZE)
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 1, IMAGE_SIZE)
    ys = y0 + (np.arange((y1 - y0) * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    xs = x0 + (np.arange((x1 - x0) * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    dy, dx = (yy - cy) / radius, (xx - cx) / radius
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    fine = _inside(kind, u, v).astype(np.float32)
    coverage[y0:y1, x0:x1] = fine.reshape(y1 - y0, SUPERSAMPLE, x1 - x0, SUPERSAMPLE).mean(axis=(1, 3))
    return coverage


def _saturated_colour(rng: np.random.Generator) -> np.ndarray:
    """A random vivid colour (never gray, so a gray occluder never looks like a shape)."""
    hue = rng.uniform(0, 1)
    sat = rng.uniform(0.6, 1.0)
    val = rng.uniform(0.55, 1.0)
    k = (np.array([5.0, 3.0, 1.0]) + hue * 6) % 6
    return val - val * sat * np.clip(np.minimum(k, 4 - k), 0, 1)


def _background(rng: np.random.Generator) -> np.ndarray:
    """A textured background: low-frequency noise, stripes or checks, in muted colours."""
    size = IMAGE_SIZE
    base = rng.uniform(0.15, 0.85, size=3)
    other = np.clip(base + rng.normal(0, 0.18, size=3), 0, 1)
    yy, xx = np.mgrid[0:size, 0:size] / size
    style = rng.integers(0, 3)
    if style == 0:
        coarse = rng.uniform(0, 1, size=(8, 8))
        pattern = np.kron(coarse, np.ones((8, 8)))
        pattern = (pattern + np.roll(pattern, 4, 0) + np.roll(pattern, 4, 1)) / 3
    elif style == 1:
        angle, freq = rng.uniform(0, np.pi), rng.uniform(3, 9)
        pattern = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy))
    else:
        cells = rng.integers(4, 10)
        pattern = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2) * 0.8 + 0.1
    pattern = pattern[..., None]
    image = base * (1 - pattern) + other * pattern
    return image + rng.normal(0, 0.03, size=image.shape)


@dataclass(frozen=True)
class ShapeSpec:
    """Where and how one shape is drawn."""

    label: int
    cy: float
    cx: float
    radius: float
    angle: float


def _place(rng: np.random.Generator, label: int, radius: float, avoid: ShapeSpec | None) -> ShapeSpec:
    margin = radius + 1
    for _ in range(100):
        cy, cx = rng.uniform(margin, IMAGE_SIZE - margin, size=2)
        if avoid is None or np.hypot(cy - avoid.cy, cx - avoid.cx) > (avoid.radius + radius) * 1.05:
            break
    return ShapeSpec(label, float(cy), float(cx), float(radius), float(rng.uniform(0, 2 * np.pi)))


def render_sample(seed: int, index: int, distractor_share: float = 0.35):
    """Render image ``index`` of the dataset with ``seed``.

    Returns ``(image HxWx3 float32, label, mask HxW bool, main ShapeSpec,
    distractor ShapeSpec | None, distractor mask HxW bool)``.
    """
    rng = np.random.default_rng([seed, index])
    label = int(rng.integers(len(CLASSES)))
    has_distractor = rng.uniform() < distractor_share
    radius = rng.uniform(13, 20) if has_distractor else rng.uniform(10, 22)
    main = _place(rng, label, radius, None)
    image = _background(rng)
    distractor = None
    if has_distractor:
        other = int((label + rng.integers(1, len(CLASSES))) % len(CLASSES))
        distractor = _place(rng, other, rng.uniform(7.5, 9.5), main)
    for spec in (main, distractor):
        if spec is None:
            continue
        coverage = _shape_mask(CLASSES[spec.label], spec.cy, spec.cx, spec.radius, spec.angle)
        colour = _saturated_colour(rng)
        shade = 1 + 0.15 * (np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE][0] - spec.cy) / IMAGE_SIZE
        fill = np.clip(colour[None, None, :] * shade[..., None], 0, 1)
        image = image * (1 - coverage[..., None]) + fill * coverage[..., None]
        if spec is main:
            mask = coverage >= 0.5
        else:
            distractor_mask = coverage >= 0.5
    if distractor is None:
        distractor_mask = np.zeros_like(mask)
    image = np.clip(image, 0, 1).astype(np.float32)
    return image, label, mask, main, distractor, distractor_mask


class ShapesDataset(torch.utils.data.Dataset):
    """``n`` shapes images, rendered once (about 1 ms each) and held in memory.

    ``data[i]`` is ``(image 3×64×64 float in [0,1], label, mask 64×64 bool)``;
    ``data.classes`` names the labels; ``data.distractors[i]`` is the class of
    image i's distractor shape or -1; ``data.objects[i]`` is the labelled
    shape's centre and radius ``(cy, cx, radius)``; ``data.distractor_masks[i]``
    is the distractor's mask (all False where there is none).
    """

    classes: tuple[str, ...] = CLASSES

    def __init__(self, n: int, seed: int = 0, distractor_share: float = 0.35):
        if n <= 0:
            raise ValueError(f"n must be a positive number of images, got {n}.")
        samples = [render_sample(seed, i, distractor_share) for i in range(n)]
        self.images = torch.from_numpy(np.stack([s[0] for s in samples])).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.tensor([s[1] for s in samples])
        self.masks = torch.from_numpy(np.stack([s[2] for s in samples]))
        self.distractors = torch.tensor([-1 if s[4] is None else s[4].label for s in samples])
        self.objects = torch.tensor([[s[3].cy, s[3].cx, s[3].radius] for s in samples])
        self.distractor_masks = torch.from_numpy(np.stack([s[5] for s in samples]))
        self.seed = seed

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i]), self.masks[i]
