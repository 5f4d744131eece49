"""The ranked lists a dataset scan keeps and merges: per unit its top and bottom images, per class its
highest-, lowest-scored and most confidently wrong images (each ordered by value, then by image index, so
that every merge is exact whatever the order of the parts), and the fixed histograms its per-unit statistics
come from. Memory is ``k`` per list (and ``BINS`` per unit with statistics), never the dataset's size."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

BINS = 1024  # histogram bins per unit, uniform in asinh(value / _SCALE)
_SCALE = 1e-3
_SPAN = 24.0  # asinh range covered: values up to about ±1e7


@dataclass
class Best:
    """The ``k`` best candidates per row, ordered by value (descending), then index (ascending).

    Empty slots hold value −inf and index −1. ``extra`` is a per-candidate payload (a position).
    """

    values: torch.Tensor  # R×k float64
    index: torch.Tensor  # R×k int64
    extra: torch.Tensor  # R×k int64

    @classmethod
    def empty(cls, rows: int, k: int) -> Best:
        return cls(torch.full((rows, k), -math.inf, dtype=torch.float64), torch.full((rows, k), -1),
                   torch.full((rows, k), -1))

    def add(self, values: torch.Tensor, index: torch.Tensor, extra: torch.Tensor) -> Best:
        """The best ``k`` of these and the candidates ``values``/``index``/``extra`` (R×n each)."""
        v = torch.cat([self.values, values.to(torch.float64)], 1)
        i = torch.cat([self.index, index], 1)
        e = torch.cat([self.extra, extra], 1)
        order = order_key(v, i).topk(self.values.shape[1], dim=1).indices
        return Best(v.gather(1, order), i.gather(1, order), e.gather(1, order))

    def merge_in(self, rows: torch.Tensor, values: torch.Tensor, index: torch.Tensor, extra: torch.Tensor) -> None:
        """:meth:`add` for sparse candidates, in place: ``rows`` (ascending) says which row each of ``values``/
        ``index``/``extra`` competes in. Only rows with candidates are merged, each against as many columns as
        its busiest row has candidates, so a batch in which few images can enter costs little; the merged rows
        are written back into this Best's tensors (a scan merges once per forward into tens of thousands of
        rows: copying every row each time is avoidable work)."""
        counts = torch.bincount(rows, minlength=len(self.values))
        column = torch.arange(len(rows)) - (torch.cumsum(counts, 0) - counts)[rows]
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
            part = Best(self.values[active], self.index[active], self.extra[active]).add(v, i, e)
            self.values.index_copy_(0, active, part.values)
            self.index.index_copy_(0, active, part.index)
            self.extra.index_copy_(0, active, part.extra)


LAST = 2**31 - 1  # the largest image index the order key holds


def order_key(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """One int64 per candidate that orders by value (descending), then by index (ascending), empty slots last.

    Values are float32 numbers (activations, probabilities rounded to float32): their bits, made monotonic, go
    in the high 32 bits and the reversed index in the low 31, so one ``topk`` replaces two stable sorts.
    """
    bits = (values.float() + 0.0).view(torch.int32)  # + 0.0: −0 becomes +0, as a comparison sees it
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).long()
    rank = torch.where(index < 0, LAST, index).clamp(max=LAST)
    return (ordered << 31) | (LAST - rank)


def merge_best(parts: list[Best]) -> Best:
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.add(p.values, p.index, p.extra)
    return merged


@dataclass
class LayerState:
    grid: tuple[int, int]
    top: Best
    bottom: Best  # values negated: the best of −value are the lowest values
    sums: torch.Tensor | None = None  # per unit: sum over images of the mean activation
    active: torch.Tensor | None = None  # per unit: images where the unit is positive somewhere
    histogram: torch.Tensor | None = None  # units × BINS counts of all activation values


@dataclass
class ClassState:
    top: Best
    bottom: Best
    wrong: Best  # images labelled another class that the model predicts as this one, by probability
    labels: dict[int, int] = field(default_factory=dict)  # image → label, for the listed images
    predictions: dict[int, int] = field(default_factory=dict)


def new_layer_state(grid: tuple[int, int], units: int, k: int, statistics: bool) -> LayerState:
    state = LayerState(grid, Best.empty(units, k), Best.empty(units, k))
    if statistics:
        state.sums = torch.zeros(units, dtype=torch.float64)
        state.active = torch.zeros(units, dtype=torch.int64)
        state.histogram = torch.zeros(units, BINS, dtype=torch.int64)
    return state


def copy_layer_state(state: LayerState) -> LayerState:
    def copied(best: Best) -> Best:
        return Best(best.values.clone(), best.index.clone(), best.extra.clone())
    return LayerState(state.grid, copied(state.top), copied(state.bottom),
                       *(None if t is None else t.clone() for t in (state.sums, state.active, state.histogram)))


def prune(classes: ClassState) -> ClassState:
    """Keep labels and predictions only for the images some class list still holds."""
    listed = set()
    for best in (classes.top, classes.bottom, classes.wrong):
        listed |= set(best.index[best.index >= 0].tolist())
    classes.labels = {i: v for i, v in classes.labels.items() if i in listed}
    classes.predictions = {i: v for i, v in classes.predictions.items() if i in listed}
    return classes


def quantile(histogram: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q`` level of each row's histogram (linear within the bin, in asinh space)."""
    counts = histogram.double()
    total = counts.sum(1, keepdim=True).clamp(min=1)
    cumulative = counts.cumsum(1) / total
    bin_index = torch.searchsorted(cumulative, torch.full((len(counts), 1), q, dtype=torch.float64)).clamp(
        max=BINS - 1)
    before = torch.where(bin_index > 0, cumulative.gather(1, (bin_index - 1).clamp(min=0)), 0.0)
    inside = counts.gather(1, bin_index) / total
    fraction = ((q - before) / inside.clamp(min=1e-30)).clamp(0, 1)
    edge = -_SPAN + (bin_index.double() + fraction) * (2 * _SPAN / BINS)
    return (torch.sinh(edge) * _SCALE)[:, 0]


def histogram(flat: torch.Tensor) -> torch.Tensor:
    """Counts of every unit's values (B×U×N) in the fixed asinh bins: U×BINS."""
    units = flat.shape[1]
    scaled = torch.asinh(flat.float() / _SCALE)
    bins = ((scaled + _SPAN) * (BINS / (2 * _SPAN))).long().clamp(0, BINS - 1)
    offsets = torch.arange(units, device=flat.device).view(1, units, 1) * BINS
    counts = torch.bincount((bins + offsets).flatten(), minlength=units * BINS)
    return counts.view(units, BINS).cpu()
