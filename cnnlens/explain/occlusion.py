"""Occlusion sensitivity (Zeiler & Fergus 2014, Fig. 7).

A square mask slides over the image; for every position one forward pass of
the occluded image (batched) gives all three of the paper's maps:

- ``map``: the target class's probability (or the target objective's value)
  with the mask at each place, averaged over the positions covering a pixel;
- ``unit_map``: the total activation of one feature map (default: the
  strongest feature map of ``layer`` on the unoccluded image);
- ``label_map``: the most probable class with the mask centred nearest each
  pixel (categorical).

The per-position grids are in ``raw`` (target), ``unit_grid`` and ``label_grid``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.hooks import capture
from ..core.images import gaussian_blur
from ..core.objectives import Logit, Objective, Predicted, Prob
from ..core.progress import CancelToken, ProgressFn, Steps
from ..core.results import Explanation
from ..core.session import look, redone_when_weights_move
from ._common import explanation, fixed_target, objective_for, positive_int

MASK_VALUES = ("gray", "mean", "zero", "blur")


def positions(length: int, mask_size: int, stride: int) -> list[int]:
    """Mask start offsets along one axis; the last one always touches the far edge."""
    starts = list(range(0, length - mask_size + 1, stride))
    if starts[-1] != length - mask_size:
        starts.append(length - mask_size)
    return starts


def _fill(mask_value: Any, x: torch.Tensor, mask_size: int, dataset_mean: tuple[float, ...] | None) -> torch.Tensor:
    """What the occluder shows: a C×H×W tensor for image ``x``."""
    if isinstance(mask_value, (int, float)) and not isinstance(mask_value, bool):
        return torch.full_like(x, float(mask_value))
    if mask_value == "gray":
        return torch.full_like(x, 0.5)
    if mask_value == "zero":
        return torch.zeros_like(x)
    if mask_value == "mean":
        if dataset_mean is not None and len(dataset_mean) == x.shape[0]:
            return torch.tensor(dataset_mean, dtype=x.dtype, device=x.device).view(-1, 1, 1).expand_as(x).clone()
        return x.mean((1, 2), keepdim=True).expand_as(x).clone()
    if mask_value == "blur":
        return gaussian_blur(x[None], sigma=max(mask_size / 4, 1.0))[0]
    raise ValueError(f"Unknown mask_value {mask_value!r}. Valid: {', '.join(MASK_VALUES)} or a number.")


@redone_when_weights_move
def occlusion(model: torch.nn.Module, x: Any, target: Any = None, *, mask_size: int | None = None,
              stride: int | None = None, mask_value: Any = "gray", layer: str | None = None,
              unit: int | None = None, batch_size: int = 64, progress: ProgressFn | None = None,
              cancel: CancelToken | None = None) -> Explanation:
    """Slide a ``mask_size`` square with ``stride`` over ``x``; see the module doc for the three maps.

    Defaults: ``mask_size`` a quarter of the image side, ``stride`` half the mask.
    """
    batch_size = positive_int(batch_size, "batch_size")
    with look(model) as s:
        batch = s.prepare(x)
        h, w = size = tuple(batch.x.shape[-2:])
        mask_size = max(min(h, w) // 4, 1) if mask_size is None else positive_int(mask_size, "mask_size")
        if mask_size > min(h, w):
            raise ValueError(f"mask_size {mask_size} is larger than the image ({h}×{w}); valid: 1..{min(h, w)}.")
        stride = max(mask_size // 2, 1) if stride is None else positive_int(stride, "stride")
        if not (isinstance(mask_value, (int, float, str)) and not isinstance(mask_value, bool)):
            raise TypeError(f"mask_value must be one of {', '.join(MASK_VALUES)} or a number, "
                            f"got {type(mask_value).__name__}.")
        if isinstance(mask_value, str) and mask_value not in MASK_VALUES:
            raise ValueError(f"Unknown mask_value {mask_value!r}. Valid: {', '.join(MASK_VALUES)} or a number.")
        info = s.layer(layer, size, spatial=True)
        objective = objective_for(s, target, size)
        ys, xs = positions(h, mask_size, stride), positions(w, mask_size, stride)
        windows = torch.zeros(len(ys) * len(xs), h, w, dtype=torch.bool, device=batch.x.device)
        for i, (y0, x0) in enumerate((y, xx) for y in ys for xx in xs):
            windows[i, y0:y0 + mask_size, x0:x0 + mask_size] = True
        if unit is not None:
            unit = positive_int(unit, "unit", minimum=0)
            if unit >= info.channels:
                raise ValueError(f"unit {unit} is out of range for layer {info.name!r}; valid: 0..{info.channels - 1}.")
        steps = Steps(len(batch.x) * len(windows), progress, cancel)
        with torch.no_grad(), capture(s.net, objective.layers | {info.name}) as cap:
            logits = s.logits(batch.x)
            if not isinstance(target, Objective) and isinstance(objective, (Logit, Predicted)):
                # a class, however it was written: Zeiler & Fergus map its probability
                objective = fixed_target(objective, logits)
                objective = objective.probability()
            totals = cap[info.name].flatten(2).sum(2)  # B×C total activation per feature map
            units = totals.argmax(1) if unit is None else torch.full((len(batch.x),), unit, device=totals.device)
            grids = {"target": [], "unit": [], "label": []}
            for i, image in enumerate(batch.x):
                fill = _fill(mask_value, image, mask_size, s.spec.mean)
                values, unit_values, labels = [], [], []
                per_image = objective_for_image(objective, i)
                for start in range(0, len(windows), batch_size):
                    m = windows[start:start + batch_size, None]
                    occluded = torch.where(m, fill[None], image[None])
                    out = s.logits(occluded)
                    values.append(per_image(cap.activations, out))
                    unit_values.append(cap[info.name][:, units[i]].flatten(1).sum(1))
                    labels.append(out.argmax(1))
                    steps.advance(len(m))
                grids["target"].append(torch.cat(values))
                grids["unit"].append(torch.cat(unit_values))
                grids["label"].append(torch.cat(labels))
        shape = (len(batch.x), len(ys), len(xs))
        target_grid, unit_grid, label_grid = (torch.stack(grids[k]).view(shape) for k in ("target", "unit", "label"))
        coverage = windows.float().flatten(1)
        counts = coverage.sum(0)
        uncovered = (counts == 0).view(h, w)  # only when stride > mask_size

        def spread(grid: torch.Tensor) -> torch.Tensor:
            """Per pixel, the mean over the mask positions covering it (nearest position if none does)."""
            mean = (grid.flatten(1).float() @ coverage / counts.clamp(min=1)).view(-1, h, w)
            if uncovered.any():
                mean = torch.where(uncovered, _nearest(grid.float(), ys, xs, mask_size, size), mean)
            return mean
        extras = {
            "unit_map": spread(unit_grid).cpu(),
            "label_map": _nearest(label_grid, ys, xs, mask_size, size).cpu(),
            "unit_grid": unit_grid.cpu(), "label_grid": label_grid.cpu(),
            "unit": units.cpu(), "positions": [(ys, xs)] * len(batch.x),
        }
        params = {"mask_size": mask_size, "stride": stride, "mask_value": mask_value, "unit_layer": info.name}
        return explanation(s, batch, spread(target_grid), target_grid, method="occlusion", objective=objective,
                           layer=info.name, params=params, logits=logits, extras=extras,
                           label_maps=("label_map",), resized=("unit_map",))


def objective_for_image(objective, i: int):
    """The objective restricted to image ``i`` of the batch (its own target class)."""
    if isinstance(objective, Logit) and isinstance(objective.index, torch.Tensor) and objective.index.numel() > 1:
        single = Prob(objective.index[i]) if isinstance(objective, Prob) else Logit(objective.index[i])
        return single
    return objective


def _nearest(grid: torch.Tensor, ys: list[int], xs: list[int], mask_size: int, size: tuple[int, int]) -> torch.Tensor:
    """Per pixel, the grid value of the mask position whose centre is nearest (B×H×W)."""
    def nearest(starts: list[int], length: int) -> torch.Tensor:
        centres = torch.tensor(starts, dtype=torch.float32) + (mask_size - 1) / 2
        pixels = torch.arange(length, dtype=torch.float32)
        return (pixels[:, None] - centres[None]).abs().argmin(1)

    iy, ix = nearest(ys, size[0]).to(grid.device), nearest(xs, size[1]).to(grid.device)
    return grid[:, iy][:, :, ix]
