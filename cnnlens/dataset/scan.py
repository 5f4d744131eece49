"""One streaming pass over a dataset that answers many questions at once.

For every unit (channel) of the chosen layers, the scan keeps the ``k``
images on which the unit's strongest spatial activation is highest (and
lowest), with the position of that activation — what Zeiler & Fergus show as
top-9 patches and Yosinski's toolbox records as (image, value, y, x). For
every class of the model's output it keeps the images scored highest and
lowest and the most confidently wrong ones. Optional per-unit statistics
(mean activation, fraction of images on which the unit is ever active, an
approximate upper quantile such as Network Dissection's top 0.5% level) come
from the same pass.

Memory is bounded by ``k`` × units (plus a fixed histogram per unit with
statistics), never by the dataset: each layer's output is reduced inside its
forward hook (so an in-place ReLU downstream cannot change it) and merged into
the running candidates after every batch. Every candidate list is ordered by
value, then by image index (ties broken deterministically), so the result
equals a brute-force top-k over all activations, and scans of disjoint parts
merge exactly (:meth:`Scan.merge`) — which is how the ranks of a
``torch.distributed`` run combine theirs.
"""

from __future__ import annotations

import json
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..core.data import batches, count, warn_if_renumbered
from ..core.hooks import tensor_output_hooks
from ..core.objectives import class_probabilities
from ..core.progress import CancelToken, ProgressFn, Steps
from ..core.session import look, redone_when_weights_move, select_output
from ..core.shadow import named_modules
from ..explain._common import boolean, positive_int

QUANTILE = 0.995  # Network Dissection's top 0.5% activation level
_BINS = 1024  # histogram bins per unit, uniform in asinh(value / _SCALE)
_SCALE = 1e-3
_SPAN = 24.0  # asinh range covered: values up to about ±1e7
_FORMAT = "cnnlens-scan-1"
_PER_IMAGE = ("classes.images", "classes.predictions", "classes.labels")


@dataclass(frozen=True)
class Hit:
    """One image of a unit's top or bottom list: its index in the data, the unit's strongest activation on it
    and where that activation is in the layer's grid."""

    index: int
    value: float
    y: int
    x: int


@dataclass(frozen=True)
class ClassHit:
    """One image of a class's list: its index, the class's probability on it, its label and the prediction."""

    index: int
    score: float
    label: int | None
    prediction: int


@dataclass
class UnitStats:
    """Per-unit statistics of one layer over the scanned images (each a tensor with one value per unit)."""

    mean: torch.Tensor  # mean activation over images and positions
    active_fraction: torch.Tensor  # fraction of images on which the unit is positive somewhere
    quantile: torch.Tensor  # the QUANTILE level of the unit's activations over all positions (approximate)


@dataclass
class _Best:
    """The ``k`` best candidates per row, ordered by value (descending), then index (ascending).

    Empty slots hold value −inf and index −1. ``extra`` is a per-candidate payload (a position).
    """

    values: torch.Tensor  # R×k float64
    index: torch.Tensor  # R×k int64
    extra: torch.Tensor  # R×k int64

    @classmethod
    def empty(cls, rows: int, k: int) -> _Best:
        return cls(torch.full((rows, k), -math.inf, dtype=torch.float64), torch.full((rows, k), -1),
                   torch.full((rows, k), -1))

    def add(self, values: torch.Tensor, index: torch.Tensor, extra: torch.Tensor) -> _Best:
        """The best ``k`` of these and the candidates ``values``/``index``/``extra`` (R×n each)."""
        v = torch.cat([self.values, values.to(torch.float64)], 1)
        i = torch.cat([self.index, index], 1)
        e = torch.cat([self.extra, extra], 1)
        order = _order_key(v, i).topk(self.values.shape[1], dim=1).indices
        return _Best(v.gather(1, order), i.gather(1, order), e.gather(1, order))

    def merged(self, rows: torch.Tensor, values: torch.Tensor, index: torch.Tensor, extra: torch.Tensor) -> _Best:
        """:meth:`add` for sparse candidates: ``rows`` (ascending) says which row each of ``values``/``index``/
        ``extra`` competes in. Only rows with candidates are merged, each against as many columns as its
        busiest row has candidates, so a batch in which few images can enter costs little."""
        counts = torch.bincount(rows, minlength=len(self.values))
        column = torch.arange(len(rows)) - (torch.cumsum(counts, 0) - counts)[rows]
        best = self
        k = self.values.shape[1]
        # rows are merged in two groups by their number of candidates, so that a few rows with many (ties, as
        # a dead unit's zeros) do not widen every row's merge
        for group in (counts > 0) & (counts <= 2 * k), counts > 2 * k:
            active = group.nonzero()[:, 0]
            if len(active) == 0:
                continue
            slot = torch.full((len(self.values),), -1, dtype=torch.int64)
            slot[active] = torch.arange(len(active))
            mine = group[rows]
            shape, where = (len(active), int(counts[active].max())), (slot[rows[mine]], column[mine])
            v = torch.full(shape, -math.inf, dtype=torch.float64).index_put_(where, values[mine].to(torch.float64))
            i = torch.full(shape, -1, dtype=torch.int64).index_put_(where, index[mine])
            e = torch.full(shape, -1, dtype=torch.int64).index_put_(where, extra[mine])
            part = _Best(best.values[active], best.index[active], best.extra[active]).add(v, i, e)
            best = _Best(best.values.index_copy(0, active, part.values),
                         best.index.index_copy(0, active, part.index), best.extra.index_copy(0, active, part.extra))
        return best


_LAST = 2**31 - 1  # the largest image index the order key holds


def _order_key(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """One int64 per candidate that orders by value (descending), then by index (ascending), empty slots last.

    Values are float32 numbers (activations, probabilities rounded to float32): their bits, made monotonic, go
    in the high 32 bits and the reversed index in the low 31, so one ``topk`` replaces two stable sorts.
    """
    bits = (values.float() + 0.0).view(torch.int32)  # + 0.0: −0 becomes +0, as a comparison sees it
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).long()
    rank = torch.where(index < 0, _LAST, index).clamp(max=_LAST)
    return (ordered << 31) | (_LAST - rank)


@dataclass
class _LayerState:
    grid: tuple[int, int]
    top: _Best
    bottom: _Best  # values negated: the best of −value are the lowest values
    sums: torch.Tensor | None = None  # per unit: sum over images of the mean activation
    active: torch.Tensor | None = None  # per unit: images where the unit is positive somewhere
    histogram: torch.Tensor | None = None  # units × _BINS counts of all activation values


@dataclass
class _ClassState:
    top: _Best
    bottom: _Best
    wrong: _Best  # images labelled another class that the model predicts as this one, by probability
    labels: dict[int, int] = field(default_factory=dict)  # image → label, for the listed images
    predictions: dict[int, int] = field(default_factory=dict)


class Scan:
    """The answers of one pass over a dataset; see the module doc. Build with :func:`scan`."""

    def __init__(self, k: int, count: int, layers: dict[str, _LayerState], classes: _ClassState | None,
                 class_names: list[str] | None, input_size: tuple[int, int]):
        self.k = k
        self.count = count
        self._layers = layers
        self._classes = classes
        self.class_names = class_names
        self.input_size = input_size

    @property
    def layers(self) -> list[str]:
        """The scanned layers, in forward order."""
        return list(self._layers)

    @property
    def statistics_recorded(self) -> bool:
        return any(state.sums is not None for state in self._layers.values())

    def __repr__(self) -> str:
        classes = f", {self._classes.top.values.shape[0]} classes" if self._classes is not None else ""
        return f"Scan({self.count} images, {len(self._layers)} layers{classes}, k={self.k})"

    # --- queries ---------------------------------------------------------------------------------------------

    def _layer(self, layer: str) -> _LayerState:
        if layer not in self._layers:
            raise ValueError(f"layer {layer!r} was not scanned. Scanned layers: {', '.join(self._layers)}.")
        return self._layers[layer]

    def _unit(self, state: _LayerState, layer: str, unit: int) -> int:
        units = state.top.values.shape[0]
        if isinstance(unit, bool) or not isinstance(unit, int) or not 0 <= unit < units:
            raise ValueError(f"unit must be an int in [0, {units - 1}] for layer {layer!r}, got {unit!r}.")
        return unit

    def units(self, layer: str) -> int:
        """How many units (channels) ``layer`` has."""
        return self._layer(layer).top.values.shape[0]

    def grid(self, layer: str) -> tuple[int, int]:
        """The spatial size (H, W) of ``layer``'s output for the scanned input size."""
        return self._layer(layer).grid

    def _hits(self, best: _Best, row: int, grid: tuple[int, int], sign: float) -> list[Hit]:
        return [Hit(int(i), sign * float(v), int(e) // grid[1], int(e) % grid[1])
                for v, i, e in zip(best.values[row], best.index[row], best.extra[row]) if i >= 0]

    def top(self, layer: str, unit: int) -> list[Hit]:
        """The ``k`` images on which ``unit``'s strongest activation is highest, highest first."""
        state = self._layer(layer)
        return self._hits(state.top, self._unit(state, layer, unit), state.grid, 1.0)

    def bottom(self, layer: str, unit: int) -> list[Hit]:
        """The ``k`` images on which ``unit``'s strongest activation is lowest, lowest first."""
        state = self._layer(layer)
        return self._hits(state.bottom, self._unit(state, layer, unit), state.grid, -1.0)

    def statistics(self, layer: str) -> UnitStats:
        """Per-unit statistics of ``layer`` (needs ``scan(..., statistics=True)``)."""
        state = self._layer(layer)
        if state.sums is None:
            raise ValueError("statistics: this scan did not record statistics; run cl.scan(..., statistics=True).")
        return UnitStats(state.sums / max(self.count, 1), state.active.double() / max(self.count, 1),
                         _quantile(state.histogram, QUANTILE))

    def _class_state(self, c: int | str) -> tuple[_ClassState, int]:
        if self._classes is None:
            raise ValueError("This scan has no class results: the model's output is not one score per class.")
        n = self._classes.top.values.shape[0]
        if isinstance(c, str):
            if not self.class_names:
                raise ValueError(f"class {c!r}: the scanned model has no class names; give an index in [0, {n - 1}] "
                                 "(or scan after cnnlens.configure(model, classes=[...])).")
            if c not in self.class_names:
                raise ValueError(f"Unknown class {c!r}. Classes: {', '.join(self.class_names or [])}.")
            c = self.class_names.index(c)
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < n:
            raise ValueError(f"class must be an int in [0, {n - 1}] or a class name, got {c!r}.")
        return self._classes, c

    def _class_hits(self, best: _Best, c: int, sign: float) -> list[ClassHit]:
        state = self._classes
        return [ClassHit(int(i), sign * float(v), state.labels.get(int(i)), state.predictions[int(i)])
                for v, i in zip(best.values[c], best.index[c]) if i >= 0 and math.isfinite(float(v))]

    def class_top(self, c: int | str) -> list[ClassHit]:
        """The images the model gives class ``c`` the highest probability, highest first."""
        state, c = self._class_state(c)
        return self._class_hits(state.top, c, 1.0)

    def class_bottom(self, c: int | str) -> list[ClassHit]:
        """The images the model gives class ``c`` the lowest probability, lowest first."""
        state, c = self._class_state(c)
        return self._class_hits(state.bottom, c, -1.0)

    def class_wrong(self, c: int | str) -> list[ClassHit]:
        """The most confidently wrong: images labelled another class that the model predicts as ``c``,
        highest probability first (empty when the data has no labels)."""
        state, c = self._class_state(c)
        return self._class_hits(state.wrong, c, 1.0)

    # --- combining, saving -----------------------------------------------------------------------------------

    @staticmethod
    def merge(scans: Sequence[Scan]) -> Scan:
        """One scan of the union of scans of disjoint parts of the data (exactly what one scan would give)."""
        scans = list(scans)
        if not scans or not all(isinstance(s, Scan) for s in scans):
            raise TypeError("merge takes a non-empty list of Scan objects.")
        first = scans[0]
        for other in scans[1:]:
            if (other.k, other.layers, other.input_size) != (first.k, first.layers, first.input_size) or \
                    (other._classes is None) != (first._classes is None) or \
                    other.statistics_recorded != first.statistics_recorded:
                raise ValueError("merge: the scans differ in k, layers, input size, classes or statistics; scan "
                                 "every part with the same settings.")
        seen: set[int] = set()
        for s in scans:
            listed = set()
            for state in s._layers.values():
                listed |= set(state.top.index[state.top.index >= 0].tolist())
            if listed & seen:
                raise ValueError(f"merge: image {min(listed & seen)} appears in two scans; merge scans of "
                                 "disjoint parts of the data.")
            seen |= listed
        layers = {}
        for name, state in first._layers.items():
            parts = [s._layers[name] for s in scans]
            merged = _LayerState(state.grid, _merge_best([p.top for p in parts]),
                                 _merge_best([p.bottom for p in parts]))
            if state.sums is not None:
                merged.sums = sum(p.sums for p in parts)
                merged.active = sum(p.active for p in parts)
                merged.histogram = sum(p.histogram for p in parts)
            layers[name] = merged
        classes = None
        if first._classes is not None:
            parts = [s._classes for s in scans]
            classes = _ClassState(_merge_best([p.top for p in parts]), _merge_best([p.bottom for p in parts]),
                                  _merge_best([p.wrong for p in parts]))
            for p in parts:
                classes.labels.update(p.labels)
                classes.predictions.update(p.predictions)
            classes = _prune(classes)
        return Scan(first.k, sum(s.count for s in scans), layers, classes, first.class_names, first.input_size)

    def save(self, path: str | Path) -> None:
        """Write the scan as a NumPy ``.npz`` of plain arrays and a JSON header (no pickle)."""
        arrays, header = self._arrays()
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        with open(path, "wb") as f:
            np.savez_compressed(f, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> Scan:
        """Read a scan written by :meth:`save` (arrays only: nothing is unpickled)."""
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: torch.from_numpy(data[key].copy()) for key in data.files}
        header = json.loads(bytes(arrays.pop("header").numpy()).decode())
        if header.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a cnnlens scan (format {header.get('format')!r}).")
        return cls._from_arrays(arrays, header)

    def _arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays: dict[str, np.ndarray] = {}
        for li, state in enumerate(self._layers.values()):
            for part in ("top", "bottom"):
                best = getattr(state, part)
                for key in ("values", "index", "extra"):
                    arrays[f"layer{li}.{part}.{key}"] = getattr(best, key).numpy()
            if state.sums is not None:
                arrays[f"layer{li}.sums"] = state.sums.numpy()
                arrays[f"layer{li}.active"] = state.active.numpy()
                arrays[f"layer{li}.histogram"] = state.histogram.numpy()
        header: dict[str, Any] = {"format": _FORMAT, "k": self.k, "count": self.count,
                                  "layers": [[name, list(state.grid)] for name, state in self._layers.items()],
                                  "class_names": self.class_names, "input_size": list(self.input_size),
                                  "classes": self._classes is not None}
        if self._classes is not None:
            for part in ("top", "bottom", "wrong"):
                best = getattr(self._classes, part)
                arrays[f"classes.{part}.values"] = best.values.numpy()
                arrays[f"classes.{part}.index"] = best.index.numpy()
            images = sorted(self._classes.predictions)
            arrays["classes.images"] = np.asarray(images, dtype=np.int64)
            arrays["classes.predictions"] = np.asarray([self._classes.predictions[i] for i in images], np.int64)
            arrays["classes.labels"] = np.asarray([self._classes.labels.get(i, -1) for i in images], np.int64)
        return arrays, header

    @classmethod
    def _from_arrays(cls, arrays: dict[str, torch.Tensor], header: dict[str, Any]) -> Scan:
        layers = {}
        for li, (name, grid) in enumerate(header["layers"]):
            parts = {part: _Best(*(arrays[f"layer{li}.{part}.{key}"] for key in ("values", "index", "extra")))
                     for part in ("top", "bottom")}
            state = _LayerState(tuple(grid), parts["top"], parts["bottom"])
            if f"layer{li}.sums" in arrays:
                state.sums, state.active = arrays[f"layer{li}.sums"], arrays[f"layer{li}.active"]
                state.histogram = arrays[f"layer{li}.histogram"]
            layers[name] = state
        classes = None
        if header["classes"]:
            parts = {}
            for part in ("top", "bottom", "wrong"):
                values, index = arrays[f"classes.{part}.values"], arrays[f"classes.{part}.index"]
                parts[part] = _Best(values, index, torch.full_like(index, -1))
            classes = _ClassState(parts["top"], parts["bottom"], parts["wrong"])
            for i, p, lab in zip(arrays["classes.images"].tolist(), arrays["classes.predictions"].tolist(),
                                 arrays["classes.labels"].tolist()):
                classes.predictions[i] = p
                if lab >= 0:
                    classes.labels[i] = lab
        return cls(header["k"], header["count"], layers, classes, header["class_names"],
                   tuple(header["input_size"]))


def _merge_best(parts: list[_Best]) -> _Best:
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.add(p.values, p.index, p.extra)
    return merged


def _prune(classes: _ClassState) -> _ClassState:
    """Keep labels and predictions only for the images some class list still holds."""
    listed = set()
    for best in (classes.top, classes.bottom, classes.wrong):
        listed |= set(best.index[best.index >= 0].tolist())
    classes.labels = {i: v for i, v in classes.labels.items() if i in listed}
    classes.predictions = {i: v for i, v in classes.predictions.items() if i in listed}
    return classes


def _quantile(histogram: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q`` level of each row's histogram (linear within the bin, in asinh space)."""
    counts = histogram.double()
    total = counts.sum(1, keepdim=True).clamp(min=1)
    cumulative = counts.cumsum(1) / total
    bin_index = torch.searchsorted(cumulative, torch.full((len(counts), 1), q, dtype=torch.float64)).clamp(
        max=_BINS - 1)
    before = torch.where(bin_index > 0, cumulative.gather(1, (bin_index - 1).clamp(min=0)), 0.0)
    inside = counts.gather(1, bin_index) / total
    fraction = ((q - before) / inside.clamp(min=1e-30)).clamp(0, 1)
    edge = -_SPAN + (bin_index.double() + fraction) * (2 * _SPAN / _BINS)
    return (torch.sinh(edge) * _SCALE)[:, 0]


def _histogram(flat: torch.Tensor) -> torch.Tensor:
    """Counts of every unit's values (B×U×N) in the fixed asinh bins: U×_BINS."""
    units = flat.shape[1]
    scaled = torch.asinh(flat.float() / _SCALE)
    bins = ((scaled + _SPAN) * (_BINS / (2 * _SPAN))).long().clamp(0, _BINS - 1)
    offsets = torch.arange(units, device=flat.device).view(1, units, 1) * _BINS
    counts = torch.bincount((bins + offsets).flatten(), minlength=units * _BINS)
    return counts.view(units, _BINS).cpu()


def _default_layers(session: Any, size: tuple[int, int]) -> list[str]:
    return [info.name for info in session.layers(size) if info.spatial and info.name]


@redone_when_weights_move
def scan(model: torch.nn.Module, data: Any, layers: str | Sequence[str] | None = None, *, k: int = 9,
         batch_size: int = 64, num_workers: int = 0, statistics: bool = False, indices: Sequence[int] | None = None,
         progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> Scan:
    """One pass over ``data`` (a dataset, DataLoader, tensor or list of images): per-unit top/bottom-``k``
    images with positions for ``layers`` (default: every spatial layer), per-class extremes, and optional
    per-unit ``statistics``. ``indices`` scans only those positions of ``data`` (images keep their positions,
    so scans of disjoint parts merge with :meth:`Scan.merge`). Under an initialized ``torch.distributed``
    process group each rank scans its share and every rank returns the merged scan of all of the data (of
    ``indices``, when given). ``batch_size`` images are loaded at a time; on the CPU they go through the model
    in parts whose largest activation stays within ``STREAM_BLOCK`` (:meth:`Session.heap_parts`: resnet18 at
    128 px takes 8 at a time, about 1.3× faster than 64; the default model 32, 1.4×), with the same result.
    See the module doc."""
    k = positive_int(k, "k")
    batch_size = positive_int(batch_size, "batch_size")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an int ≥ 0, got {num_workers!r}.")
    statistics = boolean(statistics, "statistics")
    total = count(data)
    if total == 0:
        raise ValueError("data is empty: give at least one image.")
    warn_if_renumbered(data, "scan")
    if indices is not None:
        if isinstance(data, torch.utils.data.DataLoader):
            raise ValueError("indices: a DataLoader decides its own order; pass its dataset to scan a part of it.")
        indices = [int(i) for i in indices]
        if not indices or min(indices) < 0 or max(indices) >= total or len(set(indices)) != len(indices):
            raise ValueError(f"indices must be distinct positions in [0, {total - 1}], at least one.")
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if distributed and not isinstance(data, torch.utils.data.DataLoader):
        mine = indices if indices is not None else range(total)
        indices = list(mine)[dist.get_rank()::dist.get_world_size()]
    with look(model) as s:
        if not s.is_shadow:
            raise TypeError("scan: a TorchScript model's modules cannot be hooked; pass the eager nn.Module.")
        chunks = batches(data, batch_size, num_workers=num_workers, indices=indices)
        if isinstance(data, torch.utils.data.DataLoader):
            steps = Steps(len(data), progress, cancel)
        else:
            steps = Steps(math.ceil((len(indices) if indices is not None else total) / batch_size), progress, cancel)
        result = _scan(s, chunks, layers, k, statistics, steps)
    if distributed:
        result = _all_merged(result)
    return result


class _Lists:
    """Every scanned layer's top and bottom lists as the rows of one :class:`_Best`, merged once per batch.

    Rows are [top rows of every layer (U₁ + U₂ + … rows), then their bottom rows (the same order)]; bottom
    rows hold −value. ``threshold`` holds each row's k-th value (as a value: not negated) as float32 on the
    model's device, and ``last_index`` that entry's image index, so the hooks can tell which image–unit pairs
    may enter (beyond the row's k-th, or tied with it at a lower index: a dead unit's zeros on every later
    image cannot) and find positions only for those. One merge per batch instead of one per layer keeps the
    per-layer cost of the scan to a handful of tensor operations.
    """

    def __init__(self, units: dict[str, int], k: int, device: torch.device):
        self.offsets: dict[str, int] = {}
        rows = 0
        for name, n in units.items():
            self.offsets[name] = rows
            rows += n
        self.units, self.rows = units, rows
        self.best = _Best.empty(2 * rows, k)
        self.sign = torch.cat([torch.ones(rows), -torch.ones(rows)]).to(device)
        self.threshold = torch.cat([torch.full((rows,), -math.inf), torch.full((rows,), math.inf)]).to(device)
        self.last_index = torch.full((2 * rows,), _LAST + 1, dtype=torch.int64, device=device)  # k-th's index

    def expect(self, index: torch.Tensor) -> None:
        """Before a batch (``index``: its image indices, on the device): every row's bound for every image of
        it, all layers at once. A pair can enter a row if it is beyond the row's k-th value, or equal to it with
        a lower image index (which wins a tie); for an image with a higher index than the k-th entry's, "beyond"
        is "at least the next float", so one comparison per list decides (:meth:`entrants`)."""
        toward = self.sign * math.inf  # beyond: up for top rows, down for bottom rows
        after = torch.nextafter(self.threshold, toward)
        self.pair_bounds = torch.where(index[None, :] < self.last_index[:, None], self.threshold[:, None],
                                       after[:, None])

    def entrants(self, name: str, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B×U masks of the pairs of this batch that can enter ``name``'s top and bottom lists."""
        start, n = self.offsets[name], self.units[name]
        bounds = self.pair_bounds
        return values >= bounds[start:start + n].T, values <= bounds[self.rows + start:self.rows + start + n].T

    def add(self, values: dict[str, torch.Tensor], found: dict[str, tuple[torch.Tensor, ...]],
            masks: dict[str, tuple[torch.Tensor, torch.Tensor]], index: torch.Tensor) -> None:
        """Merge one batch: per layer its B×U maxima, the (top, bottom) masks of the pairs its hook found may
        enter, and (image row, unit, position) of those pairs. The others cannot enter, so only these are
        merged, each into the rows it may enter."""
        tops = torch.cat([values[n].T for n in self.units])  # R×B, on the model's device
        where = torch.full(tops.shape, -1, dtype=torch.int64, device=tops.device)
        images, units, positions = (torch.cat(part) for part in zip(*(
            (found[n][0], found[n][1] + self.offsets[n], found[n][2]) for n in self.units)))
        where[units, images] = positions
        top_rows, top_images = torch.cat([masks[n][0].T for n in self.units]).nonzero(as_tuple=True)
        bottom_rows, bottom_images = torch.cat([masks[n][1].T for n in self.units]).nonzero(as_tuple=True)
        rows, images = torch.cat([top_rows, bottom_rows]), torch.cat([top_images, bottom_images])
        signed = torch.cat([tops[top_rows, top_images], -tops[bottom_rows, bottom_images]])
        offset = torch.cat([torch.zeros_like(top_rows), torch.full_like(bottom_rows, self.rows)])
        self.best = self.best.merged((rows + offset).cpu(), signed.cpu(), index[images.cpu()],
                                     where[rows, images].cpu())
        self.threshold = self.best.values[:, -1].float().to(self.sign.device) * self.sign
        last = self.best.index[:, -1]  # an empty slot (index −1) loses every tie: any index may enter
        self.last_index = torch.where(last < 0, _LAST + 1, last).to(self.sign.device)

    def layer(self, name: str) -> tuple[_Best, _Best]:
        start, n = self.offsets[name], self.units[name]
        best = self.best
        return tuple(_Best(best.values[part].clone(), best.index[part].clone(), best.extra[part].clone())
                     for part in (slice(start, start + n), slice(self.rows + start, self.rows + start + n)))


def _scan(s: Any, chunks: Any, layers: Any, k: int, statistics: bool, steps: Steps) -> Scan:
    modules = named_modules(s.net)
    names: list[str] | None = None
    hooked: list[str] = []
    aliases: dict[str, str] = {}  # a layer whose output is another's very tensor (a container's last child)
    states: dict[str, _LayerState] = {}
    lists: _Lists | None = None
    classes: _ClassState | None = None
    class_names = None
    seen = 0
    size = None
    forward: dict[str, Any] = {}  # this forward's maxima and positions, which layers ran, their outputs
    skipped: dict[str, int] = {}  # per layer called several times per forward: the calls before its last

    def record(name: str, module: torch.nn.Module, output: torch.Tensor) -> None:
        """Reduce ``output`` while it is intact (a later in-place op may change it). A module called several
        times per forward (torchvision's ResNet blocks call one ReLU twice) is the output of its last call:
        once the first batch has counted the calls, the earlier ones are skipped."""
        forward["ran"].add(name)
        forward["calls"][name] = call = forward["calls"].get(name, 0) + 1
        if call <= skipped.get(name, 0):
            return
        earlier = forward["outputs"].get(id(output))  # (weak reference, version, layer) of an earlier output
        rectified = source = None  # an in-place ReLU's input: relu(max) is its output's maximum, no pass needed
        if earlier is not None and earlier[0]() is output and earlier[1] == output._version:
            forward["alias"][name] = earlier[2]  # the very tensor, unchanged since: a container's last child
        else:  # (a dead tensor's id may be reused: the weak reference tells them apart)
            if (earlier is not None and earlier[0]() is output and earlier[1] == output._version - 1
                    and type(module) is torch.nn.ReLU and earlier[2] in forward["values"]):
                source = earlier[2]
                rectified = forward["values"][source]
            forward["outputs"][id(output)] = (weakref.ref(output), output._version, name)
        flat = output.detach().flatten(2) if output.dim() > 2 else output.detach()[:, :, None]
        batch, units, size = flat.shape
        # a reused module is its last call, whatever the width and grid of its earlier ones (the first batch sees all)
        if name not in states or (lists is None and call > 1):
            grid = tuple(output.shape[-2:]) if output.dim() == 4 else (1, 1)
            states[name] = _new_state(grid, units, k, statistics)
        elif states[name].top.values.shape[0] != units:
            raise ValueError(f"layers: {name!r} changed its number of units between batches.")
        blockwise = size % _BLOCK == 0 and size >= 16 * _BLOCK  # large maps: positions found in blocks
        every = None  # first batch, large maps: every pair's position at once (about 2k of every B pairs enter)
        if lists is None and blockwise and rectified is None:
            values, every = _blockwise_max(flat)
        else:
            values = flat.amax(2) if rectified is None else rectified.clamp(min=0)
        if lists is not None:
            tops, bottoms = lists.entrants(name, values)
        elif batch > 2 * k:  # first batch: a pair enters only if among this batch's k best or worst
            ranked = values.sort(0).values  # one sort: about half the time of two kthvalue calls
            tops, bottoms = values >= ranked[batch - k], values <= ranked[k - 1]
        else:  # every pair may enter
            tops = bottoms = torch.ones_like(values, dtype=torch.bool)
        rows, columns = (tops | bottoms).nonzero(as_tuple=True)  # pairs that may enter
        if every is not None:
            positions = every[rows, columns]
        elif source is not None:
            positions = _rectified_positions(flat, values, rows, columns, forward["found"][source], blockwise)
        else:
            positions = _first_maxima(_pairs(flat, rows, columns), blockwise)
        forward["values"][name], forward["found"][name] = values, (rows, columns, positions)
        forward["masks"][name] = (tops, bottoms)
        if statistics:  # added once the forward is done: only a module's last call counts
            forward["statistics"][name] = (flat.float().mean(2).double().sum(0).cpu(), (values > 0).sum(0).cpu(),
                                           _histogram(flat))

    def forwards(chunk: Any) -> Any:
        """The chunk's images in the session's heap-sized parts, with their indices and labels."""
        nonlocal size, names, hooked
        x = s.prepare(chunk.images).x
        if names is None:
            size = tuple(x.shape[-2:])
            names = _chosen_layers(s, layers, size)
            hooked = list(names)
        elif tuple(x.shape[-2:]) != size:  # (batches of one image each keep their own sizes)
            raise ValueError(f"data: images of different sizes {size} and {tuple(x.shape[-2:])} need a common "
                             "input_size (the lists' positions are on one grid); set one with "
                             "cnnlens.configure(model, input_size=...).")
        start = 0
        for part in s.heap_parts(x):
            end = start + len(part)
            yield part, torch.tensor(chunk.indices[start:end], dtype=torch.int64), chunk.labels[start:end]
            start = end

    def one_forward(x: torch.Tensor, index: torch.Tensor, labels: list) -> int:
        """One forward of images ``x`` (data indices ``index``): reduced in the hooks, merged; its image count."""
        nonlocal lists, aliases, hooked, classes, class_names
        for _attempt in range(2):
            forward.update(ran=set(), outputs={}, alias={}, values={}, found={}, masks={}, calls={}, statistics={})
            if lists is not None:
                lists.expect(index.to(x.device))
            with torch.no_grad(), tensor_output_hooks({n: modules[n] for n in hooked}, record):
                logits = _class_scores(s, x)
            missing = [n for n in hooked if n not in forward["ran"]]
            if missing:
                raise ValueError(f"layers: {missing[0]!r} did not run in the forward pass (or its output is not a "
                                 "tensor).")
            unreduced = [n for n in hooked if n not in forward["values"] and n not in forward["alias"]]
            if not unreduced:
                break
            for name in unreduced:  # called fewer times than on the first batch: reduce every call, again
                skipped.pop(name)
        if lists is None:  # the first batch fixes the layout; an alias is a copy of its original from now on
            aliases = dict(forward["alias"])
            hooked = [n for n in hooked if n not in aliases]
            skipped.update((n, calls - 1) for n, calls in forward["calls"].items() if calls > 1 and n in hooked)
            lists = _Lists({n: states[n].top.values.shape[0] for n in hooked}, k, x.device)
        lists.add(forward["values"], forward["found"], forward["masks"], index)
        for name, (sums, active, histogram) in forward["statistics"].items():
            state = states[name]
            state.sums += sums
            state.active += active
            state.histogram += histogram
        if isinstance(logits, torch.Tensor) and logits.dim() == 2:
            classes = _add_classes(classes, logits.detach(), index, labels, k)
            class_names = s.spec.classes
        return len(index)

    for chunk in chunks:
        for x, index, labels in forwards(chunk):
            seen += one_forward(x, index, labels)
        steps.advance(1)
    for name in hooked:
        states[name].top, states[name].bottom = lists.layer(name)
    for alias, original in aliases.items():
        states[alias] = _copy_state(states[original])
    states = {name: states[name] for name in names or []}
    if classes is not None:
        classes = _prune(classes)
    return Scan(k, seen, states, classes, list(class_names) if class_names else None, size)


_BLOCK = 64  # positions of large maps: the maximum of each block of 64 values, then one block's argmax


def _pairs(flat: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """The maps of the (image ``rows``, unit ``columns``) pairs of ``flat`` (B×U×N) as P×N: one row gather
    where the maps are contiguous (3–5× faster than indexing two dimensions), else indexing."""
    if not flat.is_contiguous():
        return flat[rows, columns]
    return flat.view(-1, flat.shape[2]).index_select(0, rows * flat.shape[1] + columns)


def _first_maxima(maps: torch.Tensor, blockwise: bool) -> torch.Tensor:
    """The position of each row's first maximum (P×N)."""
    return _blockwise_max(maps[None])[1][0] if blockwise else maps.argmax(1)


def _rectified_positions(flat: torch.Tensor, values: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor,
                         found: tuple[torch.Tensor, ...], blockwise: bool) -> torch.Tensor:
    """First-maximum positions of an in-place ReLU's pairs, mostly without reading its maps: where the maximum
    is positive, the ReLU leaves it and everything equal to it where it was, so the first maximum is where its
    input's was (``found``: the input layer's (row, column, position) this batch); where it is 0 the map is all
    zeros and the first maximum is position 0. Only positive pairs the input layer did not look at are read."""
    known = torch.full_like(values, -1, dtype=torch.int64)
    known[found[0], found[1]] = found[2]
    positions = torch.where(values[rows, columns] > 0, known[rows, columns], 0)
    missing = (positions < 0).nonzero()[:, 0]
    if len(missing):
        positions[missing] = _first_maxima(_pairs(flat, rows[missing], columns[missing]), blockwise)
    return positions


def _blockwise_max(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's maximum and the position of its first occurrence (B×U×N, N a multiple of _BLOCK), as
    ``flat.max(2)`` but about 4× faster: argmax over long rows is slow on the CPU, a vectorized max over blocks
    and an argmax over one block per row are not."""
    batch, units, size = flat.shape
    blocks = flat.view(batch, units, size // _BLOCK, _BLOCK)
    values, block = blocks.amax(3).max(2)  # the first block holding the maximum holds its first occurrence
    inside = blocks.gather(2, block[..., None, None].expand(-1, -1, 1, _BLOCK)).squeeze(2).argmax(2)
    return values, block * _BLOCK + inside


def _new_state(grid: tuple[int, int], units: int, k: int, statistics: bool) -> _LayerState:
    state = _LayerState(grid, _Best.empty(units, k), _Best.empty(units, k))
    if statistics:
        state.sums = torch.zeros(units, dtype=torch.float64)
        state.active = torch.zeros(units, dtype=torch.int64)
        state.histogram = torch.zeros(units, _BINS, dtype=torch.int64)
    return state


def _copy_state(state: _LayerState) -> _LayerState:
    def copied(best: _Best) -> _Best:
        return _Best(best.values.clone(), best.index.clone(), best.extra.clone())
    return _LayerState(state.grid, copied(state.top), copied(state.bottom),
                       *(None if t is None else t.clone() for t in (state.sums, state.active, state.histogram)))


def _class_scores(s: Any, x: torch.Tensor) -> torch.Tensor | None:
    """The model's B×K class scores, or None when its output is something else (a backbone's features)."""
    out = s.raw_forward(x)
    try:
        out = select_output(out, s.spec.output)
    except (TypeError, ValueError):
        return None
    if isinstance(out, torch.Tensor) and out.dim() > 2 and all(n == 1 for n in out.shape[2:]):
        out = out.flatten(1)
    return out if isinstance(out, torch.Tensor) and out.dim() == 2 else None


def _chosen_layers(s: Any, layers: Any, size: tuple[int, int]) -> list[str]:
    if layers is None:
        names = _default_layers(s, size)
        if not names:
            raise ValueError("layers: the model has no spatial layer at this input size; name the layers to scan.")
        return names
    if isinstance(layers, str):
        layers = [layers]
    if not isinstance(layers, (list, tuple)) or not layers or not all(isinstance(n, str) for n in layers):
        raise TypeError("layers must be None (every spatial layer), a layer name or a list of layer names.")
    for name in layers:
        s.check_layer_name(name, argument="layers")
    order = {info.name: i for i, info in enumerate(s.layers(size))}
    return sorted(dict.fromkeys(layers), key=lambda n: order.get(n, len(order)))


def _add_classes(state: _ClassState | None, logits: torch.Tensor, index: torch.Tensor,
                 labels: list[int | None], k: int) -> _ClassState:
    probs = class_probabilities(logits.double()).float().double().T.cpu()  # C×B, float32 numbers (see _order_key)
    n_classes = probs.shape[0]
    if state is None:
        state = _ClassState(_Best.empty(n_classes, k), _Best.empty(n_classes, k), _Best.empty(n_classes, k))
    predictions = probs.argmax(0)
    where = index.expand(n_classes, -1)
    none = torch.full_like(where, -1)
    state.top = state.top.add(probs, where, none)
    state.bottom = state.bottom.add(-probs, where, none)
    label = torch.tensor([-1 if lab is None else lab for lab in labels], dtype=torch.int64)
    classes = torch.arange(n_classes)[:, None]
    wrong = (label[None] >= 0) & (label[None] != classes) & (predictions[None] == classes)
    state.wrong = state.wrong.add(torch.where(wrong, probs, -math.inf), torch.where(wrong, where, -1), none)
    for i, p, lab in zip(index.tolist(), predictions.tolist(), labels):
        state.predictions[i] = p
        if lab is not None:
            state.labels[i] = lab
    return _prune(state)


def _all_merged(local: Scan) -> Scan:
    """Every rank's scan, gathered and merged (each rank returns the same result)."""
    arrays, header = local._arrays()
    backend_device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
        else torch.device("cpu")
    world = dist.get_world_size()
    gathered: list[dict[str, torch.Tensor]] = [{} for _ in range(world)]
    for key in sorted(arrays):
        tensor = torch.from_numpy(np.ascontiguousarray(arrays[key]))
        sizes = [torch.zeros(1, dtype=torch.int64, device=backend_device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([tensor.numel()], device=backend_device))
        longest = int(max(int(t) for t in sizes))
        padded = torch.zeros(longest, dtype=tensor.dtype, device=backend_device)
        padded[:tensor.numel()] = tensor.flatten().to(backend_device)
        parts = [torch.zeros_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        for rank, (part, n) in enumerate(zip(parts, sizes)):
            shape = (int(n),) if key in _PER_IMAGE else tensor.shape  # the only arrays whose length varies
            gathered[rank][key] = part[:int(n)].cpu().reshape(shape)
    counts = [torch.zeros(1, dtype=torch.int64, device=backend_device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([local.count], device=backend_device))
    scans = []
    for rank in range(world):
        scans.append(Scan._from_arrays(gathered[rank], dict(header, count=int(counts[rank]))))
    return Scan.merge(scans)
