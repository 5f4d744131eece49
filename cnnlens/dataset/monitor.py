"""Training evolution (Zeiler & Fergus 2014, Fig. 4), attached to a training loop with one line.

``monitor = cl.monitor(model, units=["stage2:3", ...], images=probe_set)``, then ``monitor.step()`` inside the
training loop (per epoch, or per n optimizer steps with ``every=n``). Each record holds, for every chosen unit,
its strongest activation over the probe set (value, image, position), the DeconvNet projection of that one
activation and the image patch in its receptive field, cropped to that field; plus a copy of the first
convolution's filters. A view (``monitor.view()``) draws the records as a timeline and is redrawn by ``step()``
itself, on the calling thread, so it updates while the training cell is still running.

Looking is harmless: every record is computed on the engine's shadow (eval mode, shared weights, our hooks
only there) with no randomness, so a training run ends bitwise the same with or without the monitor.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.data import batches, count
from ..core.hooks import capture
from ..core.objectives import Channel, Custom, Objective, as_objective
from ..core.progress import CancelToken, ProgressFn, Steps
from ..core.session import Session, look, redone_when_weights_move
from ..explain._common import input_gradient, positive_int

Box = tuple[int, int, int, int]


@dataclass
class UnitRecord:
    """One unit at one recorded step: its strongest activation over the probe set and what produced it.

    ``image`` indexes the probe set, ``(y, x)`` the layer's grid and ``box`` = ``(y0, y1, x0, x1)`` the
    receptive field in the probe image at the model's input size. ``projection`` (the DeconvNet projection of
    this one activation, scaled by it as :func:`cnnlens.deconvnet` does) and ``patch`` (the image) are C×h×w
    crops to ``box``, downsampled (area) when the box's longer side exceeds the monitor's ``crop_side``.
    ``field`` is the whole receptive field, which may reach beyond the image (where ``box`` is clipped; the
    image's full side where the field is larger): a view places the crop in it, so every tile of a unit shows
    its part at one scale.
    """

    unit: str
    activation: float
    image: int
    y: int
    x: int
    box: Box
    projection: torch.Tensor
    patch: torch.Tensor
    field: Box | None = None


@dataclass
class Record:
    """Everything recorded at one step: one :class:`UnitRecord` per unit (in the order given) and the
    first convolution's filters (K×C×kh×kw, a copy; None when the model has no convolution)."""

    step: int
    units: list[UnitRecord]
    filters: torch.Tensor | None
    filters_layer: str | None
    seconds: float


Listener = Callable[["Monitor", "Record | Exception"], None]


def _parse_units(units: Any, classes: Sequence[str] | None) -> list[Channel]:
    """``units`` as Channel objectives: 'layer:unit' strings or cl.channel(...)."""
    if isinstance(units, (str, Objective)):
        units = [units]
    if not isinstance(units, (list, tuple)) or not units:
        raise TypeError("units must be a non-empty list of 'layer:unit' strings or cl.channel(layer, unit) "
                        f"objectives, got {units!r}.")
    parsed = []
    for unit in units:
        objective = as_objective(unit, classes) if isinstance(unit, (str, Objective)) else None
        if not isinstance(objective, Channel):
            raise TypeError(f"units: {unit!r} is not a unit; give 'layer:unit' strings (e.g. 'stage2:3') or "
                            "cl.channel(layer, unit).")
        parsed.append(objective)
    return parsed


class Monitor:
    """Records chosen units and the first-layer filters while a model trains (see the module doc).

    ``step()`` counts calls and records on every ``every``-th one; ``record()`` records now. ``records`` holds
    the :class:`Record` list (CPU tensors). The model is never changed: not its weights, flags, grads, hooks,
    nor the global RNG.
    """

    def __init__(self, model: nn.Module, units: Any, images: Any, every: int = 1, *,
                 filters: str | None = None, batch_size: int = 64, crop_side: int | None = 128):
        self.model = model
        self.every = positive_int(every, "every")
        self.batch_size = positive_int(batch_size, "batch_size")
        self.crop_side = None if crop_side is None else positive_int(crop_side, "crop_side")
        self.calls = 0
        self.records: list[Record] = []
        self._listeners: list[weakref.WeakMethod | Callable] = []
        with look(model) as s:
            self.units = _parse_units(units, s.spec.classes)
            self.probe = self._prepare(s, images)
            size = tuple(self.probe.shape[-2:])
            self.size = size
            for unit in self.units:
                info = s.layer(unit.layer, size, argument="units")
                if not 0 <= unit.unit < (info.channels or 0):
                    raise ValueError(f"units: unit {unit.unit} of layer {unit.layer!r} is out of range; it has "
                                     f"{info.channels} channels (0..{(info.channels or 1) - 1}).")
            self.filters_layer = self._filters_layer(s, filters, size)

    # --- setup --------------------------------------------------------------------------------

    def _prepare(self, s: Session, images: Any) -> torch.Tensor:
        """The probe set as one N×C×H×W float tensor at the model's input size, kept on the CPU."""
        try:
            n = count(images)
        except TypeError as error:
            raise TypeError(f"images: {error}") from None
        if n == 0:
            raise ValueError("images: the probe set is empty; give at least one image.")
        parts = [s.prepare(raw.images).x.cpu() for raw in batches(images, self.batch_size)]
        sizes = {tuple(p.shape[-2:]) for p in parts}
        if len(sizes) > 1:
            raise ValueError(f"images: the probe images have different sizes {sorted(sizes)}; resize them to one "
                             "size or set cnnlens.configure(model, input_size=(H, W)).")
        return torch.cat(parts)

    @staticmethod
    def _filters_layer(s: Session, filters: str | None, size: tuple[int, int]) -> str | None:
        """The convolution whose filters are recorded: ``filters``, or the first Conv2d a forward runs."""
        if filters is not None:
            if not isinstance(filters, str):
                raise TypeError(f"filters must be a layer name or None, got {type(filters).__name__}.")
            s.check_layer_name(filters, argument="filters")
            if not isinstance(s.module(filters), nn.Conv2d):
                convs = [i.name for i in s.layers(size) if isinstance(s.module(i.name), nn.Conv2d)]
                raise ValueError(f"filters: {filters!r} is a {type(s.module(filters)).__name__}, not a Conv2d. "
                                 f"Convolutions: {', '.join(convs) or 'none'}.")
            return filters
        return next((i.name for i in s.layers(size) if isinstance(s.module(i.name), nn.Conv2d)), None)

    # --- recording ----------------------------------------------------------------------------

    def step(self, progress: ProgressFn | None = None, cancel: CancelToken | Callable[[], bool] | None = None
             ) -> Record | None:
        """Count one call from the training loop; on every ``every``-th call record (and redraw the views)."""
        self.calls += 1
        if self.calls % self.every:
            return None
        return self.record(progress=progress, cancel=cancel)

    def record(self, progress: ProgressFn | None = None, cancel: CancelToken | Callable[[], bool] | None = None
               ) -> Record:
        """Record now (e.g. before training starts, as step 0), append it to ``records`` and tell the views."""
        try:
            record = _record(self, progress, cancel)
        except Exception as error:  # the views show it; the training loop sees it too
            self._tell(error)
            raise
        self.records.append(record)
        self._tell(record)
        return record

    def _tell(self, outcome: Record | Exception) -> None:
        for listener in list(self._listeners):
            fn = listener() if isinstance(listener, weakref.WeakMethod) else listener
            if fn is None:
                self._listeners.remove(listener)
            else:
                fn(self, outcome)

    # --- views --------------------------------------------------------------------------------

    def listen(self, fn: Listener) -> None:
        """Call ``fn(monitor, record)`` after every new record, ``fn(monitor, error)`` when recording failed
        (a bound method is held weakly)."""
        self._listeners.append(weakref.WeakMethod(fn) if hasattr(fn, "__self__") else fn)

    def unlisten(self, fn: Listener) -> None:
        """Forget a listener given to :meth:`listen`."""
        self._listeners = [ref for ref in self._listeners
                           if (ref() if isinstance(ref, weakref.WeakMethod) else ref) not in (fn, None)]

    def view(self, **options: Any):
        """The timeline widget (:class:`cnnlens.widgets.MonitorView`); ``options`` go to its constructor."""
        from ..widgets.monitor_view import MonitorView

        return MonitorView(self, **options)

    def __repr__(self) -> str:
        units = ", ".join(u.description for u in self.units)
        return (f"Monitor(units=[{units}], probe images={len(self.probe)}, every={self.every}, "
                f"calls={self.calls}, records={len(self.records)})")


@redone_when_weights_move
def _record(monitor: Monitor, progress: ProgressFn | None, cancel: CancelToken | Callable[[], bool] | None
            ) -> Record:
    """One record of ``monitor``'s units on the model's current weights (see :class:`Record`)."""
    start = time.perf_counter()
    probe, units = monitor.probe, monitor.units
    chunks = range(0, len(probe), monitor.batch_size)
    steps = Steps(len(chunks) + 1, progress, cancel)
    steps.check()
    with look(monitor.model) as s:
        best = _strongest(s, probe, units, chunks, monitor.batch_size, steps)
        projections = _projections(s, probe, units, best)
        steps.advance()
        found = []
        for unit, (value, index, y, x), projection in zip(units, best, projections):
            info = s.layer(unit.layer, monitor.size, argument="units")
            y0, y1, x0, x1 = info.receptive_field(y, x, monitor.size)
            found.append(UnitRecord(unit.description, value, index, y, x, (y0, y1, x0, x1),
                                    _kept(projection[:, y0:y1, x0:x1], monitor.crop_side),
                                    _kept(probe[index, :, y0:y1, x0:x1], monitor.crop_side),
                                    info.whole_field(y, x, monitor.size)))
        filters = None
        if monitor.filters_layer is not None:
            filters = s.module(monitor.filters_layer).weight.detach().to("cpu", torch.float32, copy=True)
    return Record(monitor.calls, found, filters, monitor.filters_layer, time.perf_counter() - start)


def _kept(crop: torch.Tensor, side: int | None) -> torch.Tensor:
    """A copy of a C×h×w crop, area-downsampled so its longer side is at most ``side`` (None: as it is), so
    long runs on large images keep bounded records."""
    h, w = crop.shape[-2:]
    if side is None or max(h, w) <= side:
        return crop.clone()
    size = (max(round(h * side / max(h, w)), 1), max(round(w * side / max(h, w)), 1))
    return F.interpolate(crop[None].float(), size=size, mode="area")[0]


def _strongest(s: Session, probe: torch.Tensor, units: list[Channel], chunks: range, batch_size: int,
               steps: Steps) -> list[tuple[float, int, int, int]]:
    """(activation, image, y, x) of each unit's strongest activation over the probe set (first one on ties)."""
    objective = sum(units[1:], units[0])  # reads every unit's layer and no logits: the forward stops after them
    best: list[tuple[float, int, int, int]] = [(float("-inf"), 0, 0, 0)] * len(units)
    with torch.no_grad():
        for start in chunks:
            x = s.prepare(probe[start:start + batch_size]).x
            with capture(s.net, objective.layers) as cap:
                s.run(x, objective, cap)
                for k, unit in enumerate(units):
                    a = cap.activations[unit.layer]
                    if a.dim() != 4 or unit.unit >= a.shape[1]:
                        raise ValueError(f"units: {unit.description} no longer exists: layer {unit.layer!r} now "
                                         f"outputs {tuple(a.shape[1:])} per image (the model changed).")
                    a = a[:, unit.unit]  # B×H×W
                    flat = a.reshape(-1)
                    top = int(flat.argmax())
                    value = float(flat[top])  # NaN counts as the largest: a diverged unit is not missed
                    if not math.isfinite(value):
                        raise ValueError(f"units: {unit.description} has non-finite activations ({value}) on the "
                                         "probe set: the training has diverged (check the loss and learning rate).")
                    if value > best[k][0]:
                        h, w = a.shape[1:]
                        best[k] = (value, start + top // (h * w), top % (h * w) // w, top % w)
            steps.advance()
    return best


def _projections(s: Session, probe: torch.Tensor, units: list[Channel],
                 best: list[tuple[float, int, int, int]]) -> torch.Tensor:
    """The DeconvNet projection of each unit's strongest activation, in one batch (row k: unit k's image).

    Row k's objective is its one activation; in eval mode the rows are independent, so one backward gives
    every projection. Each is scaled by its (rectified) activation, as :func:`cnnlens.deconvnet` seeds it.
    """
    x = s.prepare(probe[[index for _, index, _, _ in best]]).x

    def chosen(acts, logits):
        return torch.stack([acts[u.layer][k, u.unit, y, xx] for k, (u, (_, _, y, xx)) in enumerate(zip(units, best))])

    objective = Custom(chosen, {u.layer for u in units}, "strongest activations", needs_logits=False)
    grad, _ = input_gradient(s, x, objective, rule="deconvnet")
    scale = torch.tensor([max(value, 0.0) for value, _, _, _ in best], device=grad.device, dtype=grad.dtype)
    return (grad * scale.view(-1, 1, 1, 1)).detach().cpu()


def monitor(model: nn.Module, units: Any, images: Any, every: int = 1, *, filters: str | None = None,
            batch_size: int = 64, crop_side: int | None = 128) -> Monitor:
    """A :class:`Monitor` of ``units`` ('layer:unit' strings or cl.channel objectives) over the probe set
    ``images`` (a B×C×H×W tensor, a list of images, a dataset or DataLoader), recording on every ``every``-th
    ``step()``; ``filters`` names the convolution whose filters are recorded (default: the first one);
    ``batch_size`` is the probe forward's batch; crops larger than ``crop_side`` are stored downsampled."""
    return Monitor(model, units, images, every, filters=filters, batch_size=batch_size, crop_side=crop_side)
