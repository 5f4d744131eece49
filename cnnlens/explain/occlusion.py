"""Occlusion sensitivity (Zeiler & Fergus 2014, Fig. 7).

A square mask slides over the image; for every position one forward pass of
the occluded image (batched) gives all three of the paper's maps:

- ``map``: the target class's probability (or the target objective's value)
  as a function of the mask's position: each pixel holds the value with the
  mask centred on it, linear between the positions' centres;
- ``unit_map``: the total activation of one feature map (default: the
  strongest feature map of ``layer`` on the unoccluded image), the same way;
- ``label_map``: the most probable class with the mask centred nearest each
  pixel (categorical).

A class target's probability is computed in float64 from the log-softmax, and
``map`` is returned in float64: a confident model's probabilities sit within
1e-8 of 1 almost everywhere, where float32 rounds them all to exactly 1.0 and
the map's order (which place hurts the class most) would be lost in ties.
``log_map`` holds the mean log-probability, which keeps that order even
beyond float64's resolution near 1, and ``drop_map`` = log p(clean) − log
p(occluded) (≥ 0 where hiding hurts the class) is what the views display.

Memory is bounded by ``batch_size`` × H × W whatever the number of
positions: windows are built per batch, and the maps are made from the
per-position grid by separable sums (a window is a row band times a column
band).
``partial`` receives coarser maps (two positions per side, then a stride of about the mask size) before the
final one.

``mean_map`` is the attribution convention of captum's ``Occlusion``: per
pixel, the mean of the target over the mask positions covering it. It is
piecewise constant in stride × stride blocks and averages fewer positions at
the borders, so its extreme is a tie over a block (and is pulled to the
borders); ``map`` has neither problem, which is why it is the default.

The per-position grids are in ``raw`` (target), ``unit_grid`` and ``label_grid``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..core.hooks import capture
from ..core.objectives import Context, Logit, Objective
from ..core.progress import CancelToken, ProgressFn, Steps
from ..core.results import Explanation
from ..core.session import Session, look, redone_when_weights_move
from ._common import explanation, objective_for, positive_int
from .occlusion_run import DRILL, MASK_VALUES, OcclusionRun, objective_values, positions
from .position_grid import drill_indices

_FEWEST_IN_PART = 8  # occluded images per plain forward at least (see plain_batch)


def _checked(mask_size: int | None, stride: int | None, mask_value: Any, size: tuple[int, int]) -> tuple[int, int]:
    h, w = size
    mask_size = max(min(h, w) // 4, 1) if mask_size is None else positive_int(mask_size, "mask_size")
    if mask_size > min(h, w):
        raise ValueError(f"mask_size {mask_size} is larger than the image ({h}×{w}); valid: 1..{min(h, w)}.")
    stride = max(mask_size // 2, 1) if stride is None else positive_int(stride, "stride")
    if not (isinstance(mask_value, (int, float, str)) and not isinstance(mask_value, bool)):
        raise TypeError(f"mask_value must be one of {', '.join(MASK_VALUES)} or a number, "
                        f"got {type(mask_value).__name__}.")
    if isinstance(mask_value, str) and mask_value not in MASK_VALUES:
        raise ValueError(f"Unknown mask_value {mask_value!r}. Valid: {', '.join(MASK_VALUES)} or a number.")
    return mask_size, stride


@redone_when_weights_move
def occlusion(model: torch.nn.Module, x: Any, target: Any = None, *, mask_size: int | None = None,
              stride: int | None = None, mask_value: Any = "gray", layer: Any = None,
              unit: int | None = None, batch_size: int | None = None, incremental: bool | str = "auto",
              tau: float | None = None, refine: float | None = None, quality: float | None = None,
              progress: ProgressFn | None = None,
              cancel: CancelToken | None = None, partial: Callable[[Explanation], None] | None = None
              ) -> Explanation:
    """Slide a ``mask_size`` square with ``stride`` over ``x``; see the module doc for the three maps.

    Defaults: ``mask_size`` a quarter of the image side, ``stride`` half the mask, ``batch_size`` mask
    positions per batch scaled with the image area (64 at 224 px); on the CPU, a batch's plain forwards run
    in parts whose largest activation fits in one heap block (:func:`plain_batch`: 10 images for resnet18 at
    224 px, 1.4× faster; the incremental engine runs its linear layers and full convolutions in the same
    parts, so that both sum alike). A ``batch_size`` given is the size of every forward. With
    ``partial``, coarser maps — two positions per side, then a stride of about the mask size — are handed over
    first; their positions are among the final ones, so streaming costs no extra forward.

    Inference (see :mod:`cnnlens.explain.incremental`): ``incremental="auto"`` recomputes only what each mask
    position changes where the model's graph allows it and that is faster (the maps are those of full
    re-inference), ``True`` always where it can, ``False`` never. Approximations: ``tau`` caps each layer's
    recomputed rectangle at that share of its map's side; ``refine`` computes every 4th position per side,
    interpolates, and computes only that share of the positions where the interpolated map strays most;
    ``quality`` (an SSIM in (0, 1); ignored when ``refine`` is given) picks ``refine`` by a calibration on
    this very image, from the interpolation's errors at a sample of positions computed exactly (see
    :meth:`OcclusionRun.calibrate`; every 4th position per side first, every 2nd where that is not enough), or
    computes the exact map when no share up to a half is enough; ``params["ssim"]`` is the SSIM the
    calibration expects (1 for the exact map) and ``params["calibration"]`` says which it chose. On maps of
    1,000 positions or more it also tries a first-order estimate in place of plain interpolation: the
    network runs only up to an early cut (a layer all later ones depend on, ``params["cut"]``) and the
    objective's gradient there, taken once on the clean image, times the change the mask makes at the cut
    estimates each position; the coarse grid then corrects the estimate's departure.
    """
    batch_size = None if batch_size is None else positive_int(batch_size, "batch_size")
    if incremental not in (True, False, "auto"):
        raise ValueError(f"incremental must be 'auto', True or False, got {incremental!r}.")
    if tau is not None and (isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 < tau <= 1):
        raise ValueError(f"tau must be a number in (0, 1] (the largest recomputed share of each map's side) or "
                         f"None (exact), got {tau!r}.")
    if refine is not None and (isinstance(refine, bool) or not isinstance(refine, (int, float))
                               or not 0 <= refine <= 1):
        raise ValueError(f"refine must be a number in [0, 1] (the share of positions computed after the coarse "
                         f"grid) or None (every position), got {refine!r}.")
    if quality is not None and (isinstance(quality, bool) or not isinstance(quality, (int, float))
                                or not 0 < quality < 1):
        raise ValueError(f"quality must be a number in (0, 1) (the SSIM to reach against the exact map) or None "
                         f"(exact), got {quality!r}.")
    if partial is not None and not callable(partial):
        raise TypeError(f"partial must be a callable or None, got {type(partial).__name__}.")
    with look(model) as s:
        batch = s.prepare(x)
        size = tuple(batch.x.shape[-2:])
        mask_size, stride = _checked(mask_size, stride, mask_value, size)
        info = s.layer(layer, size, spatial=True)
        objective = objective_for(s, target, size)
        if unit is not None:
            unit = positive_int(unit, "unit", minimum=0)
            if unit >= info.channels:
                raise ValueError(f"unit {unit} is out of range for layer {info.name!r}; valid: 0..{info.channels - 1}.")
        passes = _passes(size, mask_size, stride) if partial is not None else [stride]
        places = {(y, x) for p in passes for y in positions(size[0], mask_size, p)
                  for x in positions(size[1], mask_size, p)}
        if refine is not None:  # the drill-down computes its coarse grid and a share of the rest
            side_y = positions(size[0], mask_size, stride)
            side_x = positions(size[1], mask_size, stride)
            coarse = len(drill_indices(len(side_y), DRILL)) * len(drill_indices(len(side_x), DRILL))
            places = range(min(len(side_y) * len(side_x), coarse + math.ceil(refine * len(side_y) * len(side_x))))
        steps = Steps(len(batch.x) * len(places), progress, cancel)
        full_batch = batch_size
        if batch_size is None:  # the model's activations for one batch stay about those of 64 images at 224 px
            batch_size = max(1, min(64, (64 * 224 * 224) // (size[0] * size[1])))
            full_batch = plain_batch(s, size, batch_size)
        with torch.no_grad(), capture(s.net, objective.layers | {info.name}) as cap:
            logits = s.logits(batch.x)
            objective = objective.bind(logits)
            is_class = not isinstance(target, Objective) and isinstance(objective, Logit)
            if is_class:  # a class, however it was written: Zeiler & Fergus map its probability
                objective = objective.probability()
            if isinstance(objective, Logit):
                objective.check(logits.shape[1])
            totals = cap[info.name].flatten(2).sum(2)  # B×C total activation per feature map
            units = totals.argmax(1) if unit is None else torch.full((len(batch.x),), unit, device=totals.device)
            clean = objective_values(objective, Context(batch.x, cap.activations, logits))

            mode = True if tau is not None and incremental == "auto" else incremental  # a cap needs the engine
            run = OcclusionRun(s, cap, batch.x, objective, info.name, units, mask_size, mask_value, batch_size, steps,
                       logits, clean, mode, tau, refine, full_batch)
            calibration: dict[str, Any] = {}
            if quality is not None and refine is None:  # the drill-down's share where one is enough, else exact
                calibration = run.calibrate(stride, quality)
            for p in passes:
                maps = run.maps(p)
                params = {"mask_size": mask_size, "stride": p, "mask_value": mask_value, "unit_layer": info.name,
                          "inference": run.inference, "tau": tau, "refine": run.refine, "cut": run.cut,
                          "quality": quality, **calibration}
                result = explanation(s, batch, maps.pop("map"), maps.pop("raw"), method="occlusion",
                                     objective=objective, layer=info.name, params=params, logits=logits,
                                     extras=_extras(maps, units, clean), label_maps=("label_map",),
                                     resized=tuple(k for k in _CONTINUOUS if k in maps), keep_dtype=True)
                if p != passes[-1]:
                    partial(result)
            steps.advance(steps.total - steps.done)  # a calibrated drill-down may stop short of every position
        return result


def plain_batch(session: Session, size: tuple[int, int], batch_size: int) -> int:
    """Occluded images per plain forward where the caller set no ``batch_size``: a batch of ``batch_size``
    positions runs in parts whose largest activation fits in one heap block (:meth:`Session.batch_in_heap`),
    but never fewer than ``_FEWEST_IN_PART``: the incremental engine runs its full layers in the same parts
    (to sum alike), and a linear layer reads all its weights once per part (vgg16's first, 411 MB: per batch of
    64 positions at 224 px, parts of 2 made the engine 2.1× slower, parts of 8 1.26×, while full re-inference
    took 6.4 s, 8.0 s and 10.4 s undivided)."""
    return min(batch_size, max(_FEWEST_IN_PART, session.batch_in_heap(size, batch_size)))


def interactive_defaults(size: tuple[int, int], seconds_per_forward: float, budget: float = 9.0
                         ) -> tuple[int, int]:
    """``(mask_size, stride)`` for a live view: the mask a quarter of the image side, and the stride
    that keeps the number of positions (at most 13 per side, at least 4) within ``budget`` seconds of
    forwards, so a large image or a slow model still gives its map in seconds."""
    side = min(size)
    mask = max(side // 4, 1)
    per_side = int((budget / max(seconds_per_forward, 1e-6)) ** 0.5)
    per_side = max(4, min(13, per_side, side - mask + 1))
    return mask, max(1, -(-(side - mask) // max(per_side - 1, 1)))


def _passes(size: tuple[int, int], mask_size: int, stride: int) -> list[int]:
    """Strides from coarse to fine, each a multiple of ``stride`` (so its positions are among the final ones)."""
    span = min(size) - mask_size
    passes = []
    for coarse in (span, mask_size):
        p = stride * max(-(-coarse // stride), 1)
        count = len(positions(min(size), mask_size, p))
        if p > stride and 1 < count < len(positions(min(size), mask_size, stride)) and p not in passes:
            passes.append(p)
    return [*sorted(passes, reverse=True), stride]


_CONTINUOUS = ("unit_map", "log_map", "drop_map", "mean_map")  # extras resized like the map


def _extras(maps: dict, units: torch.Tensor, clean: torch.Tensor) -> dict:
    """The per-image extras; ``log_map``/``drop_map`` only for a class probability (they are log-space maps)."""
    return dict(maps, unit=units.cpu(), clean_value=clean.cpu())
