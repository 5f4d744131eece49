"""The grid of mask positions an occlusion map is made of: filling in positions not computed (linear
interpolation between computed ones, nearest labels), the drill-down's order (the coarse cells whose corners
differ most first), and the SSIM a filled-in grid is expected to reach, from the errors at a sample of
positions computed exactly. Used by :mod:`cnnlens.explain.occlusion`'s drill-down and quality calibration."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..core.images import map_ssim

SHARES = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)  # drill-down shares a quality calibration tries, cheapest first
SHARE_MARGIN = 0.5  # interpolation asks the expected SSIM for half of the quality's shortfall (for 0.9: 0.95). A
# sharp feature between the coarse grid's positions that the sample misses too is invisible to the calibration
ESTIMATE_MARGIN = 0.8  # a first-order estimate sees every position, so it asks for 80% of the shortfall (0.92)
ESTIMATE_SHARES = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)  # and is kept only where it stands in for most positions: past
# a share of 0.3 too few sampled errors lie beyond the refined positions to vouch for it (the default model at
# stride 1: 55 of 120 at 0.5, whose size fell 35% short and the map 0.03 short of 0.92)
ERROR_BOUND = 1.0  # the errors' size per rank group is taken one standard error above the sample's mean square:
# a sample's mean square of heavy-tailed errors falls short of the truth more often than not. With the point
# estimate, first-order maps fell 0.02–0.03 short of their expectation (random regnet_x_400mf, shufflenet_v2,
# mobilenet_v2, the default model at stride 1; regnet: sampled RMS 17% under the true one, kurtosis 6) and
# interpolated maps up to 0.06 (the default model's last 60 held-out images at stride 2: 1 below 0.9, 0.896;
# 10 random torchvision models × 3 images at 112 px: 1 of 30 below, mobilenet_v3_small at 0.895). With the
# bound: none below 0.9 in either (lowest 0.911 and 0.940), at about 6% more time on the default model
TRIALS = 4  # noise draws per estimate


def grid_ssim(a: Any, b: Any) -> float:
    """SSIM of an approximate per-position grid ``a`` against the exact ``b`` (scikit-image), on b's range."""
    span = float(b.max() - b.min())
    if span == 0:
        return 1.0 if float(abs(a - b).max()) == 0 else 0.0
    return map_ssim(a, b, span)


def smallest_share(reference: torch.Tensor, order: torch.Tensor, sample: torch.Tensor, errors: torch.Tensor,
                   shape: tuple[int, int], quality: float, shares: tuple[float, ...], spans: torch.Tensor,
                   margin: float = SHARE_MARGIN) -> tuple[float, float] | None:
    """The smallest of ``shares`` (of all positions, refined in ``order``) whose map is expected to reach the
    quality with part of its shortfall to spare (the expectation is noisy: it asks for 1 − ``margin`` × the
    shortfall), and that expected SSIM; None if none does. ``errors`` (B×len(sample)) are the estimate's errors
    at the ``sample`` positions (computed exactly); the expected SSIM is that of the ``reference`` grid (the
    estimated map) against itself plus noise of those errors' size (``ERROR_BOUND`` standard errors above their
    mean square) at the positions left estimated (:func:`noisy_ssim`, the worst image), on each image's
    ``spans`` (the range of its values computed exactly: an estimate's outliers must not widen the range SSIM's
    constants are scaled by, which would make the same noise look smaller)."""
    n = shape[0] * shape[1]
    sampled = torch.zeros(n, dtype=torch.bool)
    sampled[sample] = True
    rest = order[~sampled[order]]  # the positions the drill-down may still refine, in its order
    rank = torch.empty(n, dtype=torch.long)
    rank[order] = torch.arange(len(order))
    for share in shares:
        budget = min(math.ceil(share * n), len(rest))
        left = rest[budget:]
        last = int(rank[rest[budget - 1]]) if budget else -1
        beyond = rank[sample] > last  # sampled positions the drill-down would have left estimated
        score = 1.0 if len(left) == 0 else min(
            noisy_ssim(reference[i].view(shape), left, rank, sample[beyond], errors[i][beyond], float(spans[i]),
                       bound=ERROR_BOUND)
            for i in range(len(reference)))
        if score >= 1 - (1 - quality) * margin:
            return share, score
    return None


def noisy_ssim(grid: torch.Tensor, left: torch.Tensor, rank: torch.Tensor, after: torch.Tensor,
               errors: torch.Tensor, span: float, bins: int = 4, bound: float = 0.0) -> float:
    """The SSIM (on the data range ``span``) of ``grid`` against itself with noise at the ``left`` (flat)
    positions, the noise's size at each the root-mean-square of the sampled ``errors`` (at positions ``after``)
    of similar rank (``bins`` groups by rank): what interpolating those positions is expected to cost. With
    ``bound``, each group's mean square is raised by that many of its standard errors (heavy-tailed errors
    make a sample's mean square fall short of the truth more often than not). Seeded: the same inputs, the
    same score."""
    if len(after) == 0 or span <= 0:
        return 0.0  # nothing measured beyond the refined positions, or no range known: no claim
    edges = torch.quantile(rank[after].double(), torch.linspace(0, 1, bins + 1, dtype=torch.float64))
    group = (torch.searchsorted(edges[1:-1], rank[left].double(), right=True)).clamp(0, bins - 1)
    sample_group = torch.searchsorted(edges[1:-1], rank[after].double(), right=True).clamp(0, bins - 1)
    def size_of(sampled: torch.Tensor) -> torch.Tensor:
        square = sampled.pow(2)
        spread = square.std() / math.sqrt(len(square)) if len(square) > 1 else square.mean()
        return (square.mean() + bound * spread).sqrt()

    overall = size_of(errors)
    size = torch.stack([size_of(errors[sample_group == g]) if bool((sample_group == g).any()) else overall
                        for g in range(bins)])
    generator = torch.Generator().manual_seed(0)
    scores = []
    reference = grid.numpy()
    for _ in range(TRIALS):
        noisy = grid.clone().flatten()
        noisy[left] += torch.randn(len(left), generator=generator, dtype=torch.float64) * size[group]
        scores.append(map_ssim(noisy.view(grid.shape).numpy(), reference, span))
    return float(sum(scores) / len(scores))


def unknown(rows: int, columns: int) -> torch.Tensor:
    """A rows×columns float64 grid of NaN: values not known yet."""
    return torch.full((rows, columns), math.nan, dtype=torch.float64)


def drill_indices(n: int, drill: int) -> list[int]:
    """Every ``drill``-th of ``n`` positions along one side, and the last."""
    return sorted(set(range(0, n, drill)) | {n - 1})


def cell_spread(coarse: torch.Tensor, known_y: list[int], known_x: list[int], shape: tuple[int, int]
                 ) -> torch.Tensor:
    """Per fine position (ny×nx), the spread (max − min over the images and the four corners) of the coarse
    cell it lies in; ``coarse`` is B×len(known_y)×len(known_x)."""
    if coarse.shape[1] < 2 or coarse.shape[2] < 2:
        return torch.zeros(shape, dtype=coarse.dtype, device=coarse.device)
    corners = coarse[:, None]
    spread = (F.max_pool2d(corners, 2, 1) + F.max_pool2d(-corners, 2, 1))[:, 0].amax(0)  # cells
    cell_y = (torch.searchsorted(torch.tensor(known_y), torch.arange(shape[0]), right=True) - 1).clamp(
        0, len(known_y) - 2).to(coarse.device)
    cell_x = (torch.searchsorted(torch.tensor(known_x), torch.arange(shape[1]), right=True) - 1).clamp(
        0, len(known_x) - 2).to(coarse.device)
    return spread[cell_y][:, cell_x]


def interpolation_weights(knots: torch.Tensor, length: int) -> torch.Tensor:
    """length×len(knots) float64 weights that interpolate values given at the ascending ``knots`` linearly
    over 0..length−1 (constant beyond the outermost knots)."""
    weights = torch.zeros(length, len(knots), dtype=torch.float64)
    if len(knots) == 1:
        weights[:, 0] = 1.0
        return weights
    t = torch.arange(length, dtype=torch.float64).clamp(float(knots[0]), float(knots[-1]))
    upper = torch.searchsorted(knots, t, right=True).clamp(1, len(knots) - 1)
    lower = upper - 1
    frac = (t - knots[lower]) / (knots[upper] - knots[lower])
    rows = torch.arange(length)
    weights[rows, lower] = 1 - frac
    weights[rows, upper] += frac
    return weights


def linear_weights(known: list[int], n: int) -> torch.Tensor:
    """n×len(known) weights interpolating values known at indices ``known`` linearly over 0..n−1."""
    return interpolation_weights(torch.tensor(known, dtype=torch.float64), n)


def between_centres(starts: list[int], mask_size: int, length: int, device: torch.device) -> torch.Tensor:
    """length×n weights that interpolate n per-position values linearly between the positions' centres
    (constant beyond the outermost centres), so a pixel's value is the one with the mask centred on it."""
    centres = torch.tensor(starts, dtype=torch.float64) + (mask_size - 1) / 2
    return interpolation_weights(centres, length).to(device)


def nearest_index(knots: torch.Tensor, length: int) -> torch.Tensor:
    """For each of 0..length−1, the index of the nearest of ``knots`` (float32; the first on a tie)."""
    return (torch.arange(length, dtype=torch.float32)[:, None] - knots[None]).abs().argmin(1)


def nearest(grid: torch.Tensor, ys: list[int], xs: list[int], mask_size: int, size: tuple[int, int]) -> torch.Tensor:
    """Per pixel, the grid value of the mask position whose centre is nearest (B×H×W)."""
    def nearest(starts: list[int], length: int) -> torch.Tensor:
        return nearest_index(torch.tensor(starts, dtype=torch.float32) + (mask_size - 1) / 2, length)

    iy, ix = nearest(ys, size[0]).to(grid.device), nearest(xs, size[1]).to(grid.device)
    return grid[:, iy][:, :, ix]
