"""How faithful and how well placed a saliency map is: deletion and insertion curves, pointing game, mask overlap.

- Deletion and insertion (Petsiuk, Das & Saenko 2018, "RISE"): pixels are
  removed (set to a baseline) or inserted (into a blurred copy of the image) in
  the order of the map, most salient first, and the target class probability
  is read after every step. A faithful map makes the probability fall fast when
  deleting (low area under the curve) and rise fast when inserting (high area).
- Pointing game (Zhang et al. 2018): a hit when the map's maximum lies on the
  object, i.e. inside the ground-truth mask grown by ``tolerance`` pixels (a
  plateau of tied maxima: when most of it does).
- Mask overlap: the fraction of the map's positive mass that lies inside the
  mask (the "energy-based pointing game" of Wang et al. 2020). It is 1 when all
  the evidence is on the object and the mask's area fraction for a uniform map.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..core.figures import new_figure
from ..core.hooks import capture
from ..core.images import resize_map
from ..core.objectives import Context, Logit, Objective, class_probabilities
from ..core.progress import Steps
from ..core.session import Session, look, redone_when_weights_move
from ..explain._common import clean_logits, objective_for, positive_int

BASELINES = ("zeros", "mean", "blur")


@dataclass
class Curve:
    """A deletion or insertion curve: the target's score after each fraction of the pixels was changed.

    ``fractions`` has ``steps + 1`` entries from 0 to 1; ``scores`` is (steps + 1) for one image or
    B×(steps + 1) for a batch; ``auc`` the area under each curve (trapezoid rule over ``fractions``).
    """

    kind: str
    fractions: torch.Tensor
    scores: torch.Tensor
    auc: torch.Tensor
    target: str
    params: dict[str, Any]

    def figure(self, *, figure: Any = None):
        """A matplotlib figure of the curve(s), with the area in the title. Imports matplotlib lazily."""
        fig = new_figure(figure, figsize=(3.2, 2.4))
        self.plot(fig.add_subplot(1, 1, 1))
        fig.tight_layout()
        return fig

    def plot(self, ax: Any) -> None:
        """Draw the curve(s) into a matplotlib Axes, the area under them shaded (one curve) and in the title."""
        scores = self.scores if self.scores.dim() == 2 else self.scores[None]
        x = self.fractions.numpy()
        for row in scores:
            ax.plot(x, row.numpy(), lw=1.2)
        if len(scores) == 1:
            ax.fill_between(x, scores[0].numpy(), alpha=0.25)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(f"fraction of pixels {'deleted' if self.kind == 'deletion' else 'inserted'}", fontsize=7)
        ax.set_ylabel("probability" if self.target.startswith("prob") else "score", fontsize=7)
        better = "lower" if self.kind == "deletion" else "higher"
        ax.set_title(f"{self.kind} · area {float(self.auc.float().mean()):.3f} ({better} is better)", fontsize=8)


def importance(result: Any) -> Any:
    """The map to score, oriented so that higher means "matters more": an Explanation's ``map``, except for
    occlusion, whose ``map`` is the target under occlusion (lower where hiding hurts): its ``drop_map``
    (log p(clean) − log p(occluded), what the views display) when it has one, else ``-map``. Tensors and
    arrays are returned as they are."""
    if getattr(result, "method", None) == "occlusion":
        return result.extras["drop_map"] if "drop_map" in result.extras else -result.map
    return getattr(result, "map", result)


def as_maps(saliency_map: Any, batch: int, size: tuple[int, int], argument: str = "saliency_map") -> torch.Tensor:
    """A map argument (an Explanation — see :func:`importance` — or a tensor or array of H×W or B×H×W) as a
    B×H×W float tensor at ``size``."""
    value = importance(saliency_map)
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{argument} must be an Explanation, a tensor or a numpy array (H×W or B×H×W), "
                        f"got {type(saliency_map).__name__}.")
    maps = value.detach().float().cpu()
    if maps.dim() == 2:
        maps = maps[None]
    if maps.dim() != 3 or len(maps) not in (1, batch):
        raise ValueError(f"{argument} must be H×W or B×H×W with B = {batch} (the images given), "
                         f"got shape {tuple(value.shape)}.")
    if not torch.isfinite(maps).all():
        raise ValueError(f"{argument} contains NaN or Inf.")
    maps = maps.expand(batch, *maps.shape[1:])
    return resize_map(maps, size) if tuple(maps.shape[-2:]) != tuple(size) else maps


def _blurred(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A Gaussian blur of ``x`` (B×C×H×W), separable, reflect-padded (RISE's insertion start)."""
    if sigma <= 0:
        return x.clone()
    radius = max(1, min(math.ceil(2 * sigma), min(x.shape[-2:]) - 1))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    out = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _baseline(x: torch.Tensor, baseline: Any) -> torch.Tensor:
    """What deleted pixels become: a number, "zeros", "mean" (each image's channel means), "blur" or a tensor."""
    if isinstance(baseline, str):
        if baseline == "zeros":
            return torch.zeros_like(x)
        if baseline == "mean":
            return x.mean((2, 3), keepdim=True).expand_as(x)
        if baseline == "blur":
            return _blurred(x, 5.0)
        raise ValueError(f"baseline={baseline!r}: choose a number, a tensor, or one of {', '.join(BASELINES)}.")
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    if isinstance(baseline, torch.Tensor):
        try:
            return baseline.to(x).expand_as(x)
        except RuntimeError as error:
            raise ValueError(f"baseline of shape {tuple(baseline.shape)} does not broadcast to the input's "
                             f"{tuple(x.shape)}.") from error
    raise TypeError(f"baseline must be a number, a tensor or one of {', '.join(BASELINES)}; "
                    f"got {type(baseline).__name__}.")


def _scores(session: Session, x: torch.Tensor, objective: Objective) -> torch.Tensor:
    """The objective's value per image, without gradients (targets that are not classes)."""
    with torch.no_grad(), capture(session.net, objective.layers) as cap:
        logits = session.run(x, objective, cap)
        return objective(Context(x, cap.activations, logits)).float()


def _curve(kind: str, model: torch.nn.Module, x: Any, saliency_map: Any, target: Any, steps: int,
           start: Any, batch_size: int | None, progress, cancel, params: dict[str, Any]) -> Curve:
    """Both curves: images move from ``start`` (what deletion leaves, or the blurred image) to ``end``.
    ``batch_size`` None: 64 images per forward, fewer on the CPU where activations are large
    (:meth:`Session.batch_in_heap`)."""
    steps = positive_int(steps, "steps")
    batch_size = None if batch_size is None else positive_int(batch_size, "batch_size")
    with look(model) as s:
        batch = s.prepare(x)
        xs = batch.x.detach()
        b, _, h, w = xs.shape
        batch_size = s.images_per_forward(batch_size, (h, w))
        maps = as_maps(saliency_map, b, (h, w)).to(xs.device)
        objective = objective_for(s, target, (h, w))
        objective = objective.bind(clean_logits(s, xs, objective))
        other = start(xs)
        # rank[p] = position of pixel p in the map's order, most salient first (ties: raster order)
        order = maps.flatten(1).argsort(dim=1, descending=True, stable=True)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(h * w, device=xs.device).expand(b, -1))
        counts = torch.round(torch.linspace(0, h * w, steps + 1, device=xs.device)).long()
        scores = torch.empty(b, steps + 1)
        # class targets: every row's own class probability, so one chunk may mix images; others: per image
        classes = objective.classes(b, xs.device) if isinstance(objective, Logit) else None
        jobs = [(i, k) for i in range(b) for k in range(steps + 1)]
        chunks = ([jobs[first:first + batch_size] for first in range(0, len(jobs), batch_size)] if classes is not None
                  else [jobs[i * (steps + 1):][:steps + 1][first:first + batch_size]
                        for i in range(b) for first in range(0, steps + 1, batch_size)])
        tracker = Steps(len(jobs), progress, cancel)
        tracker.check()
        for chunk in chunks:
            img = torch.tensor([i for i, _ in chunk], device=xs.device)
            step = torch.tensor([k for _, k in chunk], device=xs.device)
            changed = (rank[img] < counts[step][:, None]).view(-1, 1, h, w).to(xs.dtype)  # pixels moved so far
            if kind == "deletion":
                inputs = xs[img] * (1 - changed) + other[img] * changed
            else:
                inputs = other[img] * (1 - changed) + xs[img] * changed
            if classes is not None:
                with torch.no_grad():
                    probs = class_probabilities(s.logits(inputs).float())
                objective.check(probs.shape[1])
                values = probs.gather(1, classes[img][:, None])[:, 0]
            else:
                values = _scores(s, inputs, objective.select(chunk[0][0]))
            scores[img.cpu(), step.cpu()] = values.cpu()
            tracker.advance(len(chunk))
    fractions = counts.cpu().float() / (h * w)
    auc = torch.trapezoid(scores, fractions, dim=1)
    if batch.single:
        scores, auc = scores[0], auc[0]
    target = objective.probability().description if classes is not None else objective.description
    return Curve(kind, fractions, scores, auc, target, params)


@redone_when_weights_move
def deletion(model: torch.nn.Module, x: Any, saliency_map: Any, target: Any = None, *, steps: int = 64,
             baseline: Any = 0.0, batch_size: int | None = None, progress=None, cancel=None) -> Curve:
    """Petsiuk et al.'s deletion curve: the target's probability as the map's most salient pixels are set to
    ``baseline`` (a number, a tensor, "zeros", "mean" or "blur"), in ``steps`` equal steps. Lower area = more
    faithful. ``target`` as for the methods (None: the class predicted on the clean image)."""
    return _curve("deletion", model, x, saliency_map, target, steps, lambda xs: _baseline(xs, baseline),
                  batch_size, progress, cancel, {"steps": steps, "baseline": baseline})


@redone_when_weights_move
def insertion(model: torch.nn.Module, x: Any, saliency_map: Any, target: Any = None, *, steps: int = 64,
              blur: float = 5.0, batch_size: int | None = None, progress=None, cancel=None) -> Curve:
    """Petsiuk et al.'s insertion curve: the target's probability as the map's most salient pixels are copied
    from the image into a Gaussian-blurred copy of it (``blur`` = sigma in pixels), in ``steps`` equal
    steps. Higher area = more faithful."""
    if isinstance(blur, bool) or not isinstance(blur, (int, float)) or blur < 0:
        raise ValueError(f"blur must be a number ≥ 0 (the Gaussian sigma in pixels), got {blur!r}.")
    return _curve("insertion", model, x, saliency_map, target, steps, lambda xs: _blurred(xs, float(blur)),
                  batch_size, progress, cancel, {"steps": steps, "blur": blur})


def _masks(mask: Any, maps: torch.Tensor) -> torch.Tensor:
    """A mask argument (H×W or B×H×W, bool or 0/1) as B×H×W bool at the maps' size."""
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(mask)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a tensor or numpy array (H×W or B×H×W), got {type(mask).__name__}.")
    m = mask.detach().cpu()
    m = m[None] if m.dim() == 2 else m
    if m.dim() != 3 or len(m) not in (1, len(maps)):
        raise ValueError(f"mask must be H×W or B×H×W with B = {len(maps)}, got shape {tuple(mask.shape)}.")
    m = m.expand(len(maps), *m.shape[1:]).float()
    if tuple(m.shape[-2:]) != tuple(maps.shape[-2:]):
        m = resize_map(m, tuple(maps.shape[-2:]), mode="nearest")
    return m > 0.5


def _maps_and_masks(saliency_map: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor, bool]:
    value = importance(saliency_map)
    if not isinstance(value, (torch.Tensor, np.ndarray)):
        raise TypeError(f"saliency_map must be an Explanation, a tensor or a numpy array (H×W or B×H×W), "
                        f"got {type(saliency_map).__name__}.")
    shape = tuple(value.shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"saliency_map must be H×W or B×H×W, got shape {shape or type(value).__name__}.")
    batch = shape[0] if len(shape) == 3 else 1
    maps = as_maps(saliency_map, batch, shape[-2:])
    return maps, _masks(mask, maps), len(shape) == 2


def pointing_game(saliency_map: Any, mask: Any, *, tolerance: int = 1) -> bool | torch.Tensor:
    """Whether the map's maximum lies inside ``mask`` grown by ``tolerance`` pixels (Zhang et al. 2018).

    When several pixels share the maximum (a plateau: LIME's superpixels, an upsampled coarse map), it is a hit
    when more than half of them are inside, so a flat map is a miss unless the object covers most of the image.
    One map → a bool; a batch → a bool tensor.
    """
    tolerance = positive_int(tolerance, "tolerance", minimum=0)
    maps, masks, single = _maps_and_masks(saliency_map, mask)
    grown = F.max_pool2d(masks[:, None].float(), 2 * tolerance + 1, stride=1, padding=tolerance)[:, 0] > 0
    top = (maps == maps.flatten(1).amax(1).view(-1, 1, 1)).flatten(1)
    inside = (top & grown.flatten(1)).sum(1)
    hits = 2 * inside > top.sum(1)
    return bool(hits[0]) if single else hits


def mask_overlap(saliency_map: Any, mask: Any) -> float | torch.Tensor:
    """The fraction of the map's positive mass inside ``mask`` (1: all evidence on the object; 0 for a map with
    no positive value). One map → a float; a batch → a tensor."""
    maps, masks, single = _maps_and_masks(saliency_map, mask)
    positive = maps.clamp(min=0).flatten(1)
    total = positive.sum(1)
    inside = (positive * masks.flatten(1)).sum(1)
    overlap = torch.where(total > 0, inside / total.clamp(min=1e-30), torch.zeros_like(total))
    return float(overlap[0]) if single else overlap


def mask_of(item: Any) -> torch.Tensor | None:
    """The ground-truth mask of a dataset item when it has one: the third element of a tuple (the shapes data's
    ``(image, label, mask)``) or a dict's ``"mask"``/``"masks"``/``"segmentation"``; None otherwise."""
    if isinstance(item, Mapping):
        value = next((item[k] for k in ("mask", "masks", "segmentation") if k in item), None)
    elif isinstance(item, (tuple, list)) and len(item) > 2:
        value = item[2]
    else:
        value = None
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if isinstance(value, torch.Tensor) and value.dim() == 2:
        return value
    return None
