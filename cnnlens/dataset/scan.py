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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..core.data import batches, count, warn_if_renumbered
from ..core.progress import CancelToken, ProgressFn, Steps
from ..core.session import look, redone_when_weights_move
from ..explain._common import boolean, positive_int
from .scan_lists import Best, ClassState, LayerState, merge_best, prune, quantile
from .scan_pass import run_scan

QUANTILE = 0.995  # Network Dissection's top 0.5% activation level
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


class Scan:
    """The answers of one pass over a dataset; see the module doc. Build with :func:`scan`."""

    def __init__(self, k: int, count: int, layers: dict[str, LayerState], classes: ClassState | None,
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

    def _layer(self, layer: str) -> LayerState:
        if layer not in self._layers:
            raise ValueError(f"layer {layer!r} was not scanned. Scanned layers: {', '.join(self._layers)}.")
        return self._layers[layer]

    def _unit(self, state: LayerState, layer: str, unit: int) -> int:
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

    def _hits(self, best: Best, row: int, grid: tuple[int, int], sign: float) -> list[Hit]:
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
                         quantile(state.histogram, QUANTILE))

    def _class_state(self, c: int | str) -> tuple[ClassState, int]:
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

    def _class_hits(self, best: Best, c: int, sign: float) -> list[ClassHit]:
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
            merged = LayerState(state.grid, merge_best([p.top for p in parts]),
                                 merge_best([p.bottom for p in parts]))
            if state.sums is not None:
                merged.sums = sum(p.sums for p in parts)
                merged.active = sum(p.active for p in parts)
                merged.histogram = sum(p.histogram for p in parts)
            layers[name] = merged
        classes = None
        if first._classes is not None:
            parts = [s._classes for s in scans]
            classes = ClassState(merge_best([p.top for p in parts]), merge_best([p.bottom for p in parts]),
                                  merge_best([p.wrong for p in parts]))
            for p in parts:
                classes.labels.update(p.labels)
                classes.predictions.update(p.predictions)
            classes = prune(classes)
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
            parts = {part: Best(*(arrays[f"layer{li}.{part}.{key}"] for key in ("values", "index", "extra")))
                     for part in ("top", "bottom")}
            state = LayerState(tuple(grid), parts["top"], parts["bottom"])
            if f"layer{li}.sums" in arrays:
                state.sums, state.active = arrays[f"layer{li}.sums"], arrays[f"layer{li}.active"]
                state.histogram = arrays[f"layer{li}.histogram"]
            layers[name] = state
        classes = None
        if header["classes"]:
            parts = {}
            for part in ("top", "bottom", "wrong"):
                values, index = arrays[f"classes.{part}.values"], arrays[f"classes.{part}.index"]
                parts[part] = Best(values, index, torch.full_like(index, -1))
            classes = ClassState(parts["top"], parts["bottom"], parts["wrong"])
            for i, p, lab in zip(arrays["classes.images"].tolist(), arrays["classes.predictions"].tolist(),
                                 arrays["classes.labels"].tolist()):
                classes.predictions[i] = p
                if lab >= 0:
                    classes.labels[i] = lab
        return cls(header["k"], header["count"], layers, classes, header["class_names"],
                   tuple(header["input_size"]))


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
        result = Scan(k, *run_scan(s, chunks, layers, k, statistics, steps))
    if distributed:
        result = _all_merged(result)
    return result


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
