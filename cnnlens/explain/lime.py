"""LIME for images (Ribeiro, Singh & Guestrin 2016).

The image is cut into superpixels (SLIC from scikit-image, or a regular
grid). ``samples`` random on/off patterns of superpixels are drawn (the first
keeps everything); switched-off superpixels show ``hide`` (their own mean
colour by default, as in the reference implementation). The target class's
probability on each perturbed image is fitted by a ridge regression on the
patterns, weighted by an exponential kernel of the cosine distance to the
original. The map paints the ``features`` superpixels with the largest
absolute weights (signed); all weights are in ``weights``, the on/off
patterns that were drawn in ``patterns``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from ..core.display import to_uint8
from ..core.images import gaussian_blur
from ..core.objectives import Context, Logit
from ..core.progress import CancelToken, ProgressFn, Steps
from ..core.results import Explanation
from ..core.session import look, redone_when_weights_move
from ._common import explanation, generator, objective_for, positive_int

SEGMENTATIONS = ("slic", "grid")
HIDE = ("mean", "gray", "zero", "blur")


def superpixels(image: torch.Tensor, segmentation: str, segments: int) -> torch.Tensor:
    """H×W int labels 0..d-1 for one C×H×W image."""
    h, w = image.shape[-2:]
    if segmentation == "grid":
        side = max(int(round((h * w / segments) ** 0.5)), 1)
        rows, cols = -(-h // side), -(-w // side)
        ys = torch.arange(h) // side
        xs = torch.arange(w) // side
        return ys[:, None] * cols + xs[None, :] if rows * cols else torch.zeros(h, w, dtype=torch.long)
    if segmentation == "slic":
        from skimage.segmentation import slic

        labels = slic(to_uint8(image), n_segments=segments, compactness=10, start_label=0, channel_axis=-1)
        _, dense = np.unique(labels, return_inverse=True)
        return torch.from_numpy(dense.reshape(h, w)).long()
    raise ValueError(f"Unknown segmentation {segmentation!r}. Valid: {', '.join(SEGMENTATIONS)}.")


def _hidden(hide: str, image: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    if hide == "mean":
        counts = onehot.sum((1, 2)).clamp(min=1)
        means = torch.einsum("chw,dhw->dc", image, onehot) / counts[:, None]
        return torch.einsum("dc,dhw->chw", means, onehot)
    if hide == "gray":
        return torch.full_like(image, 0.5)
    if hide == "zero":
        return torch.zeros_like(image)
    if hide == "blur":
        return gaussian_blur(image[None], sigma=max(image.shape[-1] / 16, 1.0))[0]
    raise ValueError(f"Unknown hide {hide!r}. Valid: {', '.join(HIDE)}.")


def fit_surrogate(patterns: np.ndarray, outputs: np.ndarray, kernel_width: float) -> tuple[np.ndarray, float, float]:
    """Weighted ridge fit (α = 1) of ``outputs`` on binary ``patterns``: (weights, intercept, weighted R²)."""
    from sklearn.linear_model import Ridge

    distance = 1 - patterns.sum(1) / (np.sqrt(patterns.sum(1)) * np.sqrt(patterns.shape[1]) + 1e-12)
    kernel = np.sqrt(np.exp(-(distance**2) / kernel_width**2))
    ridge = Ridge(alpha=1.0, fit_intercept=True).fit(patterns, outputs, sample_weight=kernel)
    return ridge.coef_.astype(np.float32), float(ridge.intercept_), float(ridge.score(patterns, outputs, kernel))


@redone_when_weights_move
def lime(model: torch.nn.Module, x: Any, target: Any = None, *, samples: int = 300, features: int = 5,
         segmentation: str = "slic", segments: int = 40, kernel_width: float = 0.25, hide: str = "mean",
         batch_size: int = 64, seed: int | None = None, progress: ProgressFn | None = None,
         cancel: CancelToken | None = None, partial: Callable[[Explanation], None] | None = None) -> Explanation:
    """LIME explanation of ``target`` (default: predicted class); see the module doc.

    ``partial`` (one image only) is called after every batch of ``batch_size``
    samples but the last with the surrogate fitted on the samples drawn so far,
    so a live view can show the explanation sharpen as samples accumulate; the
    final result is the same as without it. On the CPU a batch's forwards run in
    heap-sized parts (:meth:`Session.heap_parts`; resnet18 at 224 px: 2 images).
    """
    samples = positive_int(samples, "samples")
    features = positive_int(features, "features")
    segments = positive_int(segments, "segments")
    batch_size = positive_int(batch_size, "batch_size")
    if segmentation not in SEGMENTATIONS:
        raise ValueError(f"Unknown segmentation {segmentation!r}. Valid: {', '.join(SEGMENTATIONS)}.")
    if hide not in HIDE:
        raise ValueError(f"Unknown hide {hide!r}. Valid: {', '.join(HIDE)}.")
    if not isinstance(kernel_width, (int, float)) or kernel_width <= 0:
        raise ValueError(f"kernel_width must be a positive number, got {kernel_width!r}.")
    if partial is not None and not callable(partial):
        raise TypeError(f"partial must be a callable or None, got {type(partial).__name__}.")
    with look(model) as s:
        batch = s.prepare(x)
        size = tuple(batch.x.shape[-2:])
        objective = objective_for(s, target, size)
        with torch.no_grad():
            logits = s.logits(batch.x)
        objective = objective.bind(logits)
        if not isinstance(objective, Logit):
            raise ValueError(f"target: LIME explains a class (an int or None), got {objective.description!r}.")
        objective = objective.probability()
        objective.check(logits.shape[1])
        gen = generator(seed, torch.device("cpu"))
        steps = Steps(len(batch.x) * samples, progress, cancel)
        params = {"samples": samples, "features": features, "segmentation": segmentation, "segments": segments,
                  "kernel_width": kernel_width, "hide": hide, "seed": seed}

        def result(fitted: list[_Fit], drawn: int) -> Explanation:
            extras = {"segments": torch.stack([f.segments for f in fitted]), "weights": [f.weights for f in fitted],
                      "patterns": [f.patterns for f in fitted], "fit": [f.summary for f in fitted]}
            return explanation(s, batch, torch.stack([f.map for f in fitted]), None, method="lime",
                               objective=objective, layer=None, params=dict(params, samples=drawn), logits=logits,
                               extras=extras, label_maps=("segments",))

        fitted: list[_Fit] = []
        for i, image in enumerate(batch.x):
            seg = superpixels(image.cpu(), segmentation, segments)
            d = int(seg.max()) + 1
            onehot = torch.nn.functional.one_hot(seg, d).permute(2, 0, 1).to(image)
            patterns = torch.randint(0, 2, (samples, d), generator=gen).to(image)
            patterns[0] = 1
            hidden = _hidden(hide, image, onehot)
            per_image = objective.select(i)
            outputs = []
            with torch.no_grad():
                for start in range(0, samples, batch_size):
                    keep = torch.einsum("sd,dhw->shw", patterns[start:start + batch_size], onehot)[:, None]
                    perturbed = hidden[None] + keep * (image - hidden)[None]
                    out = torch.cat([s.logits(part) for part in s.heap_parts(perturbed)])
                    outputs.append(per_image(Context(None, {}, out)))
                    steps.advance(len(keep))
                    drawn = start + len(keep)
                    if partial is not None and batch.single and 1 < drawn < samples:
                        partial(result([_fit(patterns[:drawn], torch.cat(outputs), seg, features, kernel_width)],
                                       drawn))
            fitted.append(_fit(patterns, torch.cat(outputs), seg, features, kernel_width))
        return result(fitted, samples)


class _Fit(NamedTuple):
    """One image's surrogate: the painted map, all superpixel weights, segments, samples and fit statistics."""

    map: torch.Tensor
    weights: torch.Tensor
    segments: torch.Tensor
    patterns: torch.Tensor
    summary: dict


def _numpy(values: torch.Tensor) -> np.ndarray:
    """``values`` as a NumPy array, at least float32 (NumPy has no bfloat16, scikit-learn no float16)."""
    return values.to(torch.promote_types(values.dtype, torch.float32)).cpu().numpy()


def _fit(patterns: torch.Tensor, outputs: torch.Tensor, seg: torch.Tensor, features: int,
         kernel_width: float) -> _Fit:
    """Fit the surrogate and paint the ``features`` superpixels with the largest |weight|."""
    coef, intercept, score = fit_surrogate(_numpy(patterns), _numpy(outputs), kernel_width)
    shown = np.argsort(-np.abs(coef))[:features]
    painted = np.zeros(len(coef), np.float32)
    painted[shown] = coef[shown]
    return _Fit(torch.from_numpy(painted)[seg], torch.from_numpy(coef), seg, patterns.to(torch.uint8).cpu(),
                {"intercept": intercept, "score": score, "shown": shown.tolist()})
