"""One occlusion computation (:func:`cnnlens.explain.occlusion.occlusion`): the occluded forwards for the mask
positions a map needs — by incremental inference where the model's graph allows it and that is faster, else
in full — accumulated per position in bounded memory; Krypton's approximations on top (the drill-down over a
coarse grid, first-order estimates at an early cut) with the quality calibration that picks them; and the
three maps made from the per-position grids."""

from __future__ import annotations

import functools
import math
import time
import weakref
from collections.abc import Callable
from typing import Any

import torch

from ..core.images import gaussian_blur
from ..core.objectives import Context, Objective, Prob, class_log_probabilities
from ..core.progress import Steps
from ..core.session import Session
from .incremental import Incremental, padded_parts
from .incremental_graph import graph_of, output_node_of
from .position_grid import (
    ESTIMATE_MARGIN,
    ESTIMATE_SHARES,
    SHARE_MARGIN,
    SHARES,
    between_centres,
    cell_spread,
    drill_indices,
    linear_weights,
    nearest,
    nearest_index,
    smallest_share,
    unknown,
)

MASK_VALUES = ("gray", "mean", "zero", "blur")
_CHECKED = 8  # occluded images run in full once per run, to check the incremental engine and time it
_WORTH = 2.0  # "auto" keeps the engine where a full batch is at least this many times its work (measured:
# resnet18 2.2 → 3.4× faster, vgg16 6.9 → 8.9×, default model 2.4 → 2.9×; densenet121 1.9 → 0.55×,
# mobilenet_v3_small 1.1 → 0.85×: small crops and many small operations cost more per unit of work)
_TIMED_FROM = 1.3  # between this and _WORTH, the first batch also runs in full, timed, and the engine is kept if
_FASTER = 1.1  # the full batch took this many times its time (measured on a first batch: resnet34, work ratio
# 1.5, runs 1.7× faster incrementally; densenet121, work ratio 1.9, 4× slower). The maps are the same either way
_DECISIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # shared net -> {setting: use the engine}

DRILL = 4  # the drill-down's coarse grid keeps every 4th position per side (and the last)
_DRILLS = (4, 2)  # grids a quality calibration tries, coarsest first
_FEWEST = 64  # positions below which a calibration is not worth its cost: the exact map
_SAMPLE = 0.06  # share of the positions a quality calibration computes to measure the interpolation's errors
_SAMPLE_MOST = 120  # and at most this many (enough for the errors' size per rank group; on large maps the sample
# would otherwise cost more than the estimate it checks)
_LINEAR_FROM = 1000  # positions from which a calibration also tries first-order estimates (on smaller maps their
# bookkeeping cost more than they saved: the default model's 25 × 25 maps)
_PROBE_TAU = 0.3  # the probe's rectangles are capped at this share of each map's side (Krypton's thresholding)
_PROBE_WORK = 0.15  # first-order estimates are made at the deepest cut within this share of an exact position's
# work (random resnet18 at 224 px: after layer2; each step deeper roughly doubles the cost)


def positions(length: int, mask_size: int, stride: int) -> list[int]:
    """Mask start offsets along one axis; the last one always touches the far edge."""
    starts = list(range(0, length - mask_size + 1, stride))
    if starts[-1] != length - mask_size:
        starts.append(length - mask_size)
    return starts


def mask_fill(mask_value: Any, x: torch.Tensor, mask_size: int, dataset_mean: tuple[float, ...] | None) -> torch.Tensor:
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


def mask_windows(starts: torch.Tensor, mask_size: int, size: tuple[int, int]) -> torch.Tensor:
    """b×H×W boolean masks for the (y0, x0) rows of ``starts`` (b×2)."""
    in_y = mask_covers(starts[:, 0], mask_size, size[0], starts.device).T
    in_x = mask_covers(starts[:, 1], mask_size, size[1], starts.device).T
    return in_y[:, :, None] & in_x[:, None, :]


def mask_covers(starts: list[int] | torch.Tensor, mask_size: int, length: int, device: torch.device) -> torch.Tensor:
    """length×n: True where the mask started at each of ``starts`` covers the pixel along this side."""
    pixels = torch.arange(length, device=device)[:, None]
    first = torch.as_tensor(starts, device=device)[None]
    return (pixels >= first) & (pixels < first + mask_size)


def objective_values(objective: Objective, ctx: Context) -> torch.Tensor:
    """The objective per image, in float64 (a probability through the float64 log-softmax)."""
    if isinstance(objective, Prob):
        log_p = class_log_probabilities(ctx.logits.double())
        idx = objective.classes(len(log_p), log_p.device)
        return log_p.gather(1, idx[:, None])[:, 0].exp()
    return objective(ctx).double()


def log_objective_values(objective: Objective, ctx: Context) -> torch.Tensor | None:
    if not isinstance(objective, Prob):
        return None
    log_p = class_log_probabilities(ctx.logits.double())
    return log_p.gather(1, objective.classes(len(log_p), log_p.device)[:, None])[:, 0]


def engine_factory(session: Session, layer: str, objective: Objective, tau: float | None, rows: int
                    ) -> Callable[[], Incremental] | None:
    """Makes incremental engines for this model (one per image, made on first use), or None when the model
    cannot be traced, the unit layer is not a node of its graph, or the target reads activations."""
    if objective.layers or not session.is_shadow:
        return None
    graph = graph_of(session.net, session._shared)
    watch = output_node_of(graph, layer) if graph is not None else None
    if watch is None:
        return None
    return lambda: Incremental(session.net, graph, watch, tau, rows)


class OcclusionRun:
    """One occlusion computation: the occluded forwards for a stride, accumulated in bounded memory."""

    def __init__(self, session: Session, cap, images: torch.Tensor, objective: Objective, layer: str,
                 units: torch.Tensor, mask_size: int, mask_value: Any, batch_size: int, steps: Steps,
                 logits: torch.Tensor, clean: torch.Tensor, incremental: bool | str = "auto",
                 tau: float | None = None, refine: float | None = None, full_batch: int | None = None):
        self.s, self.cap, self.images, self.objective, self.layer = session, cap, images, objective, layer
        self.units, self.mask_size, self.mask_value = units, mask_size, mask_value
        self.batch_size, self.steps = batch_size, steps
        # images per plain forward, the same in every call: the batch in as few parts of at most full_batch as
        # possible, nearly equal (64 in parts of at most 41: 32; of at most 10: 10, and batches of 60 positions)
        parts = -(-batch_size // (full_batch or batch_size))
        self.full_batch = -(-batch_size // parts)
        self.chunk = self.full_batch * (batch_size // self.full_batch)  # positions per batch: whole parts
        self.clean_log = log_objective_values(objective, Context(images, {}, logits))
        self.clean = clean  # the objective per image, unoccluded
        self.linearize = False  # engines take slopes at their cuts (while a calibration runs)
        self.probe: str | None = None  # the cut first-order estimates are made at (decided on the first batch)
        self.probe_decided = False
        self.cut: str | None = None  # the cut whose first-order estimate stands in for uncomputed positions
        self.estimated: dict[tuple[int, int], int] = {}  # position -> column in ``estimates``
        self.estimates = unknown(len(images), 0)  # B×m first-order changes at the probe, from runs up to it
        # (capped at _PROBE_TAU, computed positions included, so that the errors sampled are the estimate's)
        self.make_engine = engine_factory(session, layer, objective, tau, self.full_batch) if incremental else None
        self.forced = incremental is True  # "auto" keeps the engine only where it is faster
        self.engine_seconds = 0.0  # the engine's last batch
        self.tau, self.refine, self.drill = tau, refine, DRILL
        self.engines: dict[int, Incremental] = {}  # per image: its clean activations
        self.fills: dict[int, torch.Tensor] = {}  # per image: what the occluder shows
        self.net_fills: dict[int, torch.Tensor] = {}  # the same as the network's input
        self.checked = False
        # "auto" decides once per model and setting, so that the same call always takes the same path
        self.decision_key = (tuple(images.shape[1:]), mask_size, batch_size, layer, str(images.device))
        decided = _DECISIONS.get(session._shared, {}).get(self.decision_key) if incremental == "auto" else None
        if decided is not None and self.make_engine is not None:
            self.checked = True
            self.make_engine = self.make_engine if decided else None
        self.inference = "incremental" if self.make_engine is not None else "full"
        self.done: dict[tuple[int, int], int] = {}  # mask position -> its column in ``values``
        b = len(images)
        self.values = {key: torch.zeros(b, 0, dtype=torch.float64, device=images.device)
                       for key in ("target", "unit", "log")}
        self.values["label"] = torch.zeros(b, 0, dtype=torch.long, device=images.device)

    def _compute(self, places: list[tuple[int, int]]) -> None:
        """The occluded forwards for mask positions not computed yet (a finer pass reuses a coarser one's)."""
        if not places:
            return
        size = tuple(self.images.shape[-2:])
        has_log = isinstance(self.objective, Prob)
        starts = torch.tensor(places, device=self.images.device)
        new = {key: [] for key in ("target", "unit", "log", "label")}
        for chunk in starts.split(self.chunk):
            # the chunk's masks, built once and only for a plain forward (the engine reads the crops)
            windows = functools.cache(functools.partial(mask_windows, chunk, self.mask_size, size))
            parts = {key: [] for key in new}
            for i, image in enumerate(self.images):
                out, unit_total = self._forward(i, chunk, windows, image, self._fill_of(i))
                ctx = Context(None, self.cap.activations, out)
                per_image = self.objective.select(i)
                parts["target"].append(objective_values(per_image, ctx))
                parts["unit"].append(unit_total)
                parts["log"].append(log_objective_values(per_image, ctx) if has_log
                                    else torch.zeros_like(parts["unit"][-1]))
                parts["label"].append(out.argmax(1))
                self.steps.advance(len(chunk))
            for key in new:
                new[key].append(torch.stack(parts[key]))
        offset = self.values["target"].shape[1]
        for key in new:
            self.values[key] = torch.cat([self.values[key], *new[key]], 1)
        self.done.update((p, offset + j) for j, p in enumerate(places))

    def _fill_of(self, i: int) -> torch.Tensor:
        """What the occluder shows on image ``i`` (made once per run: a blur is not free)."""
        if i not in self.fills:
            self.fills[i] = mask_fill(self.mask_value, self.images[i], self.mask_size, self.s.spec.mean)
        return self.fills[i]

    def _incremental(self, i: int, chunk: torch.Tensor, image: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(logits, unit totals) of the occluded images by incremental inference, or None to run them in
        full (no engine for this model or target)."""
        if self.make_engine is None:
            return None
        if i not in self.engines:
            self.engines[i] = self.make_engine()
            self.engines[i].clean(self.s.net_input(image[None]))
            if self.linearize:
                try:
                    self.engines[i].slope(self._objective_of(i))
                except (RuntimeError, TypeError):  # not differentiable from its cuts: no first-order estimates
                    self.engines[i].slopes = {}
        engine = self.engines[i]
        start = time.perf_counter()
        count = len(chunk)  # a short batch runs padded like the plain forward's last part (its tensors' layout,
        chunk = next(padded_parts(chunk, -(-count // self.full_batch) * self.full_batch))[0]  # so its bits)
        output, unit_total = engine.run(chunk[:, 0], chunk[:, 1], self._crops(i, chunk), int(self.units[i]))
        self.engine_seconds = time.perf_counter() - start  # for "auto"'s check on the first batch
        if self.linearize and not self.probe_decided and engine.work[0] > 0:  # from the first batch's work:
            cheap = [node for node, work in engine.work_at.items() if work <= _PROBE_WORK * engine.work[0]]
            self.probe = cheap[-1].name if cheap else None  # the deepest cut within _PROBE_WORK of it
            self.probe_decided = True
        return self.s.checked_logits(output)[:count], None if unit_total is None else unit_total[:count]

    def _crops(self, i: int, chunk: torch.Tensor) -> torch.Tensor:
        """What the occluder shows at the ``chunk`` positions of image ``i``, in the network's input space."""
        if i not in self.net_fills:
            self.net_fills[i] = self.s.net_input(self._fill_of(i)[None])[0]
        rows = chunk[:, :1] + torch.arange(self.mask_size, device=chunk.device)
        cols = chunk[:, 1:] + torch.arange(self.mask_size, device=chunk.device)
        return self.net_fills[i][:, rows[:, :, None], cols[:, None, :]].transpose(0, 1)

    def _objective_of(self, i: int) -> Callable[[Any], torch.Tensor]:
        """Image ``i``'s objective as a function of the network's output for one image: the log-probability
        for a class (first-order estimates are made in log space, where a probability near 0 or 1 is not
        squashed), else the objective's value."""
        per_image = self.objective.select(i)
        values = log_objective_values if isinstance(self.objective, Prob) else objective_values

        def objective(output: Any) -> torch.Tensor:
            return values(per_image, Context(None, self.cap.activations, self.s.checked_logits(output)))[0]
        return objective

    def _estimate_up_to_probe(self, places: list[tuple[int, int]]) -> None:
        """First-order estimates at the probe for the positions not estimated yet: each image's engine runs
        only up to the probe, its rectangles capped at ``_PROBE_TAU`` of each map's side (Krypton's
        thresholding: a third of the probe's time on resnet18, for 0.004 of the estimate's SSIM). Computed
        positions are estimated too: their errors are the ones the calibration samples."""
        places = [p for p in places if p not in self.estimated]
        if not places:
            return
        starts = torch.tensor(places, device=self.images.device)
        found = unknown(len(self.images), len(places))
        for start in range(0, len(places), self.batch_size):
            chunk = starts[start:start + self.batch_size]
            for i, engine in self.engines.items():
                probe = [n for n in engine.cuts if n.name == self.probe]
                engine.run(chunk[:, 0], chunk[:, 1], self._crops(i, chunk), None, stop=probe[0], estimate_at=probe,
                           tau=_PROBE_TAU)
                if probe[0] in engine.linear:  # (else no estimate: 0, plain interpolation there)
                    found[i, start:start + len(chunk)] = engine.linear[probe[0]].cpu()
            self.steps.check()
        offset = self.estimates.shape[1]
        self.estimates = torch.cat([self.estimates, found], 1)
        self.estimated.update((p, offset + j) for j, p in enumerate(places))

    def _first_order(self, change: torch.Tensor) -> dict[str, torch.Tensor]:
        """The grids (target, unit, log) a first-order ``change`` (B×n) of the objective gives: the clean
        value moved by it (the probability through its log); the unit's total has no estimate (0)."""
        change = change.to(self.images.device)
        if isinstance(self.objective, Prob):  # a log-probability is at most 0, whatever the first order says
            log = (self.clean_log.view(-1, 1).double() + change).clamp(max=0.0)
            return {"target": log.exp(), "log": log, "unit": torch.zeros_like(change)}
        return {"target": self.clean.view(-1, 1).double().to(change.device) + change,
                "log": torch.zeros_like(change), "unit": torch.zeros_like(change)}

    def _forward(self, i: int, chunk: torch.Tensor, windows: Callable[[], torch.Tensor], image: torch.Tensor,
                 fill: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, unit totals) of image ``i`` occluded at the ``chunk`` positions: incremental when the
        engine applies. Its first batch is also run in full on a few positions, once per model and setting,
        as a check: the engine must agree with the plain forward (else the trace missed something, such as
        data-dependent control flow) and, for "auto", save enough work (else this model gains nothing: dense
        connections, early global context), or, where the work saved is modest, be faster than the whole batch
        run in full, timed; if not, the rest runs in full."""
        found = self._incremental(i, chunk, image)
        if found is None:
            return self._full(i, windows(), image, fill)
        if self.checked or self.tau is not None:  # an approximation is not checked against the exact forward
            return found
        self.checked = True
        n = min(len(chunk), _CHECKED)
        out = self.s.logits(torch.where(windows()[:n, None], fill[None], image[None]))
        agree = torch.allclose(found[0][:n], out, rtol=1e-3, atol=1e-4 * max(1.0, float(out.abs().max())))
        done, full = self.engines[i].work
        keep = agree and (self.forced or full >= _WORTH * done)
        plain = None
        if agree and not keep and full >= _TIMED_FROM * done:  # in between, work does not tell: time the batch
            start = time.perf_counter()
            plain = self._full(i, windows(), image, fill)
            keep = time.perf_counter() - start >= _FASTER * self.engine_seconds
        if not self.forced:
            _DECISIONS.setdefault(self.s._shared, {})[self.decision_key] = keep
        if keep:
            return found
        self.make_engine, self.engines = None, {}
        self.inference = "full" if agree else "full (the incremental engine disagreed)"
        return plain if plain is not None else self._full(i, windows(), image, fill)  # (plain: already run in full)

    def _full(self, i: int, windows: torch.Tensor, image: torch.Tensor, fill: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, unit totals) of image ``i`` occluded in ``windows``, by the plain forward, exactly
        ``full_batch`` images at a time (the last part padded: :func:`padded_parts`)."""
        logits, totals = [], []
        for part, count in padded_parts(windows, self.full_batch):
            logits.append(self.s.logits(torch.where(part[:, None], fill[None], image[None]))[:count])
            totals.append(self.cap[self.layer][:count, self.units[i]].flatten(1).double().sum(1))
        return torch.cat(logits), torch.cat(totals)

    def _computed(self, places: list[tuple[int, int]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """B×n grids (target, unit, log) and labels of these positions, computing those not done yet."""
        self._compute([p for p in places if p not in self.done])
        rows = [self.done[p] for p in places]
        grids = {key: self.values[key][:, rows] for key in ("target", "unit", "log")}
        return grids, self.values["label"][:, rows]

    def _drill_plan(self, ys: list[int], xs: list[int], drill: int, cut: str | None = None
                    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """The drill-down's first step: every ``drill``-th position per side computed and interpolated over the
        grid (B×n grids; labels from the nearest computed position), and the positions not computed yet in the
        order the drill-down refines them: those in the coarse cells whose corners differ most (where the map
        changes and interpolation is least trustworthy) first. With a ``cut``, what is interpolated (and
        ranked) is the grid's departure from the first-order estimate at that cut; the caller adds the
        estimate."""
        fine_y, fine_x = drill_indices(len(ys), drill), drill_indices(len(xs), drill)
        coarse_places = [(ys[i], xs[j]) for i in fine_y for j in fine_x]
        coarse_grids, coarse_labels = self._computed(coarse_places)
        if cut is not None:
            estimate = self._first_order(self._changes(coarse_places))
            coarse_grids = {key: grid.double() - estimate[key] for key, grid in coarse_grids.items()}
        b, shape = len(self.images), (len(ys), len(xs))
        device = self.images.device
        ay, ax = linear_weights(fine_y, len(ys)).to(device), linear_weights(fine_x, len(xs)).to(device)
        grids = {key: torch.einsum("yc,bcd,xd->byx", ay, g.view(b, len(fine_y), len(fine_x)).double(), ax)
                 .reshape(b, -1) for key, g in coarse_grids.items()}
        near_y = nearest_index(torch.tensor(fine_y, dtype=torch.float32), len(ys)).to(device)
        near_x = nearest_index(torch.tensor(fine_x, dtype=torch.float32), len(xs)).to(device)
        labels = coarse_labels.view(b, len(fine_y), len(fine_x))[:, near_y][:, :, near_x].reshape(b, -1)
        key = "log" if isinstance(self.objective, Prob) else "target"
        stray = cell_spread(coarse_grids[key].view(b, len(fine_y), len(fine_x)).double(), fine_y, fine_x,
                             shape).flatten()
        known = torch.tensor([(y, x) in self.done for y in ys for x in xs], device=stray.device)
        stray = torch.where(known, -math.inf, stray)  # positions computed already need no second look
        order = stray.argsort(descending=True, stable=True)[:int((~known).sum())].cpu()
        return grids, labels, order

    def _computed_columns(self, places: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
        """Of ``places``, the indices of those computed so far and their columns in ``values``."""
        indices = [i for i, p in enumerate(places) if p in self.done]
        return indices, [self.done[places[i]] for i in indices]

    def _drilled(self, ys: list[int], xs: list[int]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Krypton's adaptive drill-down (:meth:`_drill_plan`) over every ``self.drill``-th position per side,
        then the share ``refine`` of all positions computed in its order. The rest stay interpolated."""
        places = [(y, x) for y in ys for x in xs]
        grids, labels, order = self._drill_plan(ys, xs, self.drill, self.cut)
        budget = min(math.ceil(self.refine * len(places)), len(order))
        self._compute([places[i] for i in order[:budget].tolist()])
        if self.cut is not None:  # the first-order estimate where nothing better is known
            self._estimate_up_to_probe(places)
            for key, value in self._first_order(self._changes(places)).items():
                grids[key] += value
            if isinstance(self.objective, Prob):  # estimate plus departure: still a probability
                grids["target"].clamp_(0.0, 1.0)
                grids["log"].clamp_(max=0.0)
        indices, columns = self._computed_columns(places)  # every position computed keeps its exact value
        for k in grids:
            grids[k][:, indices] = self.values[k][:, columns].to(grids[k].dtype)
        labels[:, indices] = self.values["label"][:, columns]
        return grids, labels

    def calibrate(self, stride: int, quality: float) -> dict[str, Any]:
        """Pick the drill-down for SSIM ``quality`` at this stride, from this image's own errors: every 4th
        position per side first (:meth:`_estimate`); where nothing is enough there, every 2nd. Sets
        ``self.refine``, ``self.drill`` and ``self.cut`` (``refine`` None when nothing is enough: the exact map)
        and returns what it measured. Nothing is wasted: every position computed is an exact position of the
        result, and the first-order estimates are those the result uses."""
        h, w = self.images.shape[-2:]
        ys, xs = positions(h, self.mask_size, stride), positions(w, self.mask_size, stride)
        sampled = 0
        self.linearize = len(ys) * len(xs) >= _LINEAR_FROM
        try:
            for drill in _DRILLS:
                fine_y, fine_x = drill_indices(len(ys), drill), drill_indices(len(xs), drill)
                if len(ys) * len(xs) < _FEWEST or 2 * len(fine_y) * len(fine_x) > len(ys) * len(xs):
                    break  # few positions, or a grid of half of them: nothing to gain
                found = self._estimate(ys, xs, drill, quality)
                sampled += found.pop("sampled")
                if self.refine is not None:
                    self.drill = drill
                    return {**found, "drill": drill, "sampled": sampled}
            return {"ssim": 1.0, "calibration": "exact", "sampled": sampled}
        finally:
            self.linearize = False  # positions computed from now on keep their exact values

    def _estimate(self, ys: list[int], xs: list[int], drill: int, quality: float) -> dict[str, Any]:
        """The drill-down over every ``drill``-th position per side: that grid is computed (:meth:`_drill_plan`),
        then a sample of the positions not computed yet (``_SAMPLE`` of all, evenly spread over the order in
        which the drill-down would refine them) is computed exactly. Two ways of filling the positions left
        uncomputed are scored on that sample: plain interpolation of the grid, and (from ``_LINEAR_FROM``
        positions, where the model's graph has a cut within ``_PROBE_WORK`` of an exact position's work) the
        first-order estimate at that cut (:meth:`Incremental.slope`), run up to the cut for every position,
        plus the interpolated departure from it. For each, the smallest share in ``SHARES`` (from 0 for the
        estimate) whose map is expected to reach the quality with part of its shortfall to spare (the expected
        SSIM is noisy; ``SHARE_MARGIN``, ``ESTIMATE_MARGIN``, :func:`smallest_share`) is found, and the one
        that computes fewer positions is kept in ``self.refine`` and ``self.cut``, if it computes fewer than
        every position. The sample is at most ``_SAMPLE_MOST`` positions."""
        n = len(ys) * len(xs)
        places = [(y, x) for y in ys for x in xs]
        grids, _, order = self._drill_plan(ys, xs, drill)
        count = min(len(order), math.ceil(_SAMPLE * n), _SAMPLE_MOST)
        if count == 0:
            return {"ssim": 1.0, "calibration": "exact", "sampled": 0}
        probe = self.probe if self.linearize and self.engines and all(
            e.slopes for e in self.engines.values()) else None
        plans = {None: (grids["target"].cpu(), order)}
        if probe is not None:  # the interpolated departure from the estimate, and the order it ranks
            self._estimate_up_to_probe(places)
            residual, _, probe_order = self._drill_plan(ys, xs, drill, probe)
            plans[probe] = (residual["target"].cpu(), probe_order)
        sample = order[((torch.arange(count) + 0.5) * len(order) / count).long()]
        exact, _ = self._computed([places[int(i)] for i in sample])
        exact = exact["target"].double().cpu()
        indices, columns = self._computed_columns(places)
        known = self.values["target"][:, columns].double().cpu()
        spans = known.amax(1) - known.amin(1)  # each image's range where known exactly
        remaining = n - len(indices)
        best: tuple[float, float, str | None, float] | None = None  # (cost, share, cut, expected SSIM)
        for cut, (guess, cut_order) in plans.items():
            if cut is not None:  # the probe's estimate everywhere, plus the interpolated departure
                guess = guess + self._first_order(self._changes(places))["target"].cpu()
            reference = guess.clone()  # the estimated map, exact where known
            reference[:, indices] = known
            found = smallest_share(reference, cut_order, sample, guess[:, sample] - exact, (len(ys), len(xs)), quality,
                                   ESTIMATE_SHARES if cut is not None else SHARES, spans,
                                   ESTIMATE_MARGIN if cut is not None else SHARE_MARGIN)
            if found is not None:
                cost = min(math.ceil(found[0] * n), remaining)  # positions computed beyond the estimate
                if best is None or cost < best[0]:
                    best = (cost, found[0], cut, found[1])
        if best is None or best[0] >= remaining:
            self.cut = None
            return {"ssim": 1.0, "calibration": "exact", "sampled": count}
        _, self.refine, self.cut, score = best
        how = "refine from sampled positions" if self.cut is None else \
            f"first-order estimate at {self.cut}, refined from sampled positions"
        return {"ssim": score, "calibration": how, "sampled": count}

    def _changes(self, places: list[tuple[int, int]]) -> torch.Tensor:
        """B×n first-order changes at the probe for these positions, from the runs up to it (0 where there is
        none)."""
        columns = torch.tensor([self.estimated.get(p, -1) for p in places], dtype=torch.long)
        known = columns >= 0
        found = torch.zeros(len(self.images), len(places), dtype=torch.float64)
        found[:, known] = self.estimates[:, columns[known]].nan_to_num(0.0)
        return found.to(self.images.device)

    def maps(self, stride: int) -> dict[str, Any]:
        h, w = size = tuple(self.images.shape[-2:])
        ys, xs = positions(h, self.mask_size, stride), positions(w, self.mask_size, stride)
        device = self.images.device
        places = [(y, x) for y in ys for x in xs]
        b = len(self.images)
        grids, labels = self._drilled(ys, xs) if self.refine is not None else self._computed(places)
        in_y, in_x = (mask_covers(s, self.mask_size, n, device).double() for s, n in ((ys, h), (xs, w)))
        shape = (b, len(ys), len(xs))
        # the window-mean map: a window is a row band times a column band, so the sums over windows separate
        sums = torch.einsum("hy,byx,wx->bhw", in_y, grids["target"].view(shape).double(), in_x)
        counts = in_y.sum(1)[:, None] * in_x.sum(1)[None, :]
        has_log = isinstance(self.objective, Prob)
        wy, wx = between_centres(ys, self.mask_size, h, device), between_centres(xs, self.mask_size, w, device)

        def at_position(grid: torch.Tensor) -> torch.Tensor:
            """Per pixel, the value with the mask centred there (linear between the positions' centres)."""
            return torch.einsum("hy,byx,wx->bhw", wy, grid.view(shape).double(), wx)

        mean_map = sums / counts.clamp(min=1)
        if not bool((counts > 0).all()):  # stride > mask_size: pixels no window covers take the nearest one
            mean_map = torch.where(counts > 0, mean_map, nearest(grids["target"].view(shape), ys, xs,
                                                                  self.mask_size, size))
        maps: dict[str, Any] = {
            "map": at_position(grids["target"]), "raw": grids["target"].view(shape), "mean_map": mean_map,
            "unit_map": at_position(grids["unit"]).float(),
            "label_map": nearest(labels.view(shape), ys, xs, self.mask_size, size),
            "unit_grid": grids["unit"].view(shape).float().cpu(), "label_grid": labels.view(shape).cpu(),
            "positions": [(ys, xs)] * b,
        }
        if has_log:
            log_map = at_position(grids["log"])
            maps["log_map"] = log_map
            maps["drop_map"] = self.clean_log.view(-1, 1, 1) - log_map
        return maps
