"""Filter health: dead units, near-duplicate, rotated and opposite-phase filters of convolutional layers.

A trained network often wastes units: some never respond (dead), some
learn the same kernel twice (near-duplicates), some learn a kernel and its
90° rotation or mirror image (the Keras blog post's VGG-16 filters), and the
first layers learn pairs of opposite phase, w and about -w (Shang et al.
2016, the observation behind CReLU). :func:`filter_health` finds all four in
the first convolution and any layers you name.

- **dead**: a unit that is never positive on ``data``, measured where its
  rectifier reads it (the output of the BatchNorm that directly follows the
  convolution, when one does, else the convolution's own output), in one
  streaming pass with a running maximum per unit (memory does not grow with
  the data); and, with or without data, a unit whose kernel is all zeros
  (its output does not depend on the input).
- **duplicates**: pairs whose flattened kernels have cosine similarity
  ≥ ``duplicate``.
- **rotated**: pairs where unit b's kernel ≈ T(unit a's kernel) for a
  rotation or mirror T of the kernel's spatial grid (cosine ≥ ``rotated``),
  that are not already duplicates and where a's kernel is not itself
  symmetric under T.
- **opposite**: pairs with cosine similarity ≤ ``-opposite``.

Kernels are compared within a layer (biases are not part of a kernel), and
in a grouped convolution only within a group: kernels of two groups read
different input channels, so alike numbers are not alike filters (a
depthwise layer has one kernel per group and no pairs). Every pair is
reported once, with the lower unit first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..core.data import batches, count
from ..core.hooks import StopForward, tensor_output_hooks
from ..core.progress import CancelToken, ProgressFn, Steps
from ..core.session import Session, look, redone_when_weights_move
from ..core.shadow import module_name, named_modules

Unit = tuple[str, int]
KINDS = ("dead", "duplicates", "rotated", "opposite")

# The seven non-identity symmetries of a square grid, applied to the last two axes (rows, columns) of a kernel.
# "rot90" is torch.rot90(w, 1, (-2, -1)) (counter-clockwise as drawn); flip-h mirrors left-right.
TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "rot90": lambda w: torch.rot90(w, 1, (-2, -1)),
    "rot180": lambda w: torch.rot90(w, 2, (-2, -1)),
    "rot270": lambda w: torch.rot90(w, 3, (-2, -1)),
    "flip-h": lambda w: w.flip(-1),
    "flip-v": lambda w: w.flip(-2),
    "transpose": lambda w: w.transpose(-2, -1),
    "anti-transpose": lambda w: w.transpose(-2, -1).flip(-2, -1),
}
SQUARE_ONLY = frozenset({"rot90", "rot270", "transpose", "anti-transpose"})  # change an h×w grid's shape


class Pair(tuple):
    """``((layer, a), (layer, b), similarity)``: a tuple, so it unpacks as that triple.

    ``transform`` says how b's kernel relates to a's: ``"identity"`` (duplicates), ``"negated"``
    (opposite phase) or the rotation/mirror T with b ≈ T(a) (one of :data:`TRANSFORMS`).
    """

    transform: str

    def __new__(cls, a: Unit, b: Unit, similarity: float, transform: str = "identity") -> Pair:
        pair = super().__new__(cls, (a, b, float(similarity)))
        pair.transform = transform
        return pair

    def __getnewargs__(self) -> tuple:
        return (*self, self.transform)

    @property
    def a(self) -> Unit:
        return self[0]

    @property
    def b(self) -> Unit:
        return self[1]

    @property
    def similarity(self) -> float:
        return self[2]

    def __repr__(self) -> str:
        how = "" if self.transform in ("identity", "negated") else f", {self.transform!r}"
        return f"Pair({self.a!r}, {self.b!r}, {self.similarity:.4f}{how})"


@dataclass
class HealthReport:
    """What :func:`filter_health` found, per kind, in ``layers`` (the first convolution first).

    ``dead`` holds (layer, unit) entries; ``duplicates``, ``rotated`` and ``opposite`` hold :class:`Pair`
    triples ``((layer, a), (layer, b), similarity)`` sorted by layer, then strongest first. ``peak`` is
    each unit's largest response on the data where it was measured (``measured_at``); with no data it
    is empty and only all-zero kernels count as dead (``notes`` says so).
    """

    layers: list[str]
    units: dict[str, int]
    dead: list[Unit]
    duplicates: list[Pair]
    rotated: list[Pair]
    opposite: list[Pair]
    images: int
    thresholds: dict[str, float]
    measured_at: dict[str, str] = field(default_factory=dict)
    peak: dict[str, torch.Tensor] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def activity_checked(self) -> bool:
        """Whether units were run on data (else dead means only all-zero kernels)."""
        return self.images > 0

    def findings(self, layer: str) -> dict[int, list[tuple[str, int | None, float | None, str]]]:
        """Per unit of ``layer``: (kind, other unit or None, similarity or None, transform) for each finding."""
        if layer not in self.units:
            raise ValueError(f"layer {layer!r} was not checked; checked: {', '.join(self.layers)}.")
        found: dict[int, list] = {}
        for name, unit in self.dead:
            if name == layer:
                found.setdefault(unit, []).append(("dead", None, None, ""))
        for kind in KINDS[1:]:
            for pair in getattr(self, kind):
                if pair.a[0] == layer:
                    found.setdefault(pair.a[1], []).append((kind, pair.b[1], pair.similarity, pair.transform))
                    found.setdefault(pair.b[1], []).append((kind, pair.a[1], pair.similarity, pair.transform))
        return found

    def summary(self) -> str:
        """A few readable lines: per layer, the counts and the strongest pairs of each kind."""
        t = self.thresholds
        lines = [f"Filter health of {len(self.layers)} layer(s) on {self.images} image(s) "
                 f"(duplicate ≥ {t['duplicate']:g}, rotated ≥ {t['rotated']:g}, opposite ≤ -{t['opposite']:g})"]
        for layer in self.layers:
            dead = [u for name, u in self.dead if name == layer]
            pairs = {kind: [p for p in getattr(self, kind) if p.a[0] == layer] for kind in KINDS[1:]}
            lines.append(f"  {layer} ({self.units[layer]} units): {len(dead)} dead, "
                         + ", ".join(f"{len(v)} {k}" for k, v in pairs.items()))
            if dead:
                lines.append(f"    dead: {', '.join(map(str, dead[:20]))}{' …' if len(dead) > 20 else ''}")
            for kind, found in pairs.items():
                shown = "; ".join(f"{p.a[1]}~{p.b[1]} {p.similarity:+.3f}"
                                  + (f" {p.transform}" if kind == "rotated" else "") for p in found[:5])
                if found:
                    lines.append(f"    {kind}: {shown}{' …' if len(found) > 5 else ''}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()


def _threshold(value: Any, argument: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{argument} must be a number in (0, 1], got {type(value).__name__}.")
    if not 0 < value <= 1:
        raise ValueError(f"{argument} must be a cosine similarity threshold in (0, 1], got {value!r}.")
    return float(value)


def conv_layers(session: Session) -> list[str]:
    """The model's 2-d convolutions, in the order the forward runs them (modules that did not run last)."""
    modules = named_modules(session.net)
    convs = [name for name, m in modules.items() if name and isinstance(m, nn.Conv2d)]
    order = {info.name: i for i, info in enumerate(session.layers())}
    return sorted(convs, key=lambda name: order.get(name, len(order)))


def _chosen(session: Session, layer: Any) -> list[str]:
    """The first convolution plus ``layer`` (a conv's name or module, a block holding convs, a list of these, or
    "all"), each once."""
    convs = conv_layers(session)
    if not convs:
        raise ValueError(f"model: {type(session.model).__name__} has no Conv2d layer; filter health compares "
                         "convolution kernels.")
    if layer is None:
        return convs[:1]
    if isinstance(layer, str) and layer == "all":
        return convs
    given = list(layer) if isinstance(layer, (list, tuple)) else [layer]
    chosen = convs[:1]
    for item in given:
        name = item
        if isinstance(item, nn.Module):
            name = module_name(session.model, item)
            if name is None:
                raise ValueError(f"layer: the {type(item).__name__} given is not a module of this model; pass one "
                                 "of its Conv2d modules or a layer name.")
        if not isinstance(name, str):
            raise TypeError(f"layer must be a layer name, a Conv2d module of the model, a list of them, or 'all'; "
                            f"got {type(item).__name__}.")
        inside = [name] if name in convs else [c for c in convs if c.startswith(name + ".")]
        if not inside:
            what = "is not a Conv2d layer" if name in named_modules(session.net) else "is not a layer of the model"
            raise ValueError(f"layer {name!r} {what} and holds none: filter health compares convolution kernels. "
                             f"Conv2d layers: {', '.join(convs)} (or layer='all').")
        chosen += [c for c in inside if c not in chosen]
    return chosen


def _measured(session: Session, conv: str) -> str:
    """Where a conv's activity is read: the BatchNorm that completes right after it with the same channels."""
    table = session.layers()
    names = [info.name for info in table]
    if conv not in names:
        return conv
    i = names.index(conv)
    if i + 1 < len(table):
        nxt = table[i + 1]
        module = named_modules(session.net)[nxt.name]
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.num_features == table[i].channels:
            return nxt.name
    return conv


def _normalized(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened unit-norm kernels (zero rows for all-zero kernels) and which kernels are all zero."""
    flat = weight.detach().float().flatten(1)
    norms = flat.norm(dim=1)
    zero = norms <= 1e-8 * norms.max().clamp(min=torch.finfo(torch.float32).tiny)
    unit = flat / norms.clamp(min=torch.finfo(torch.float32).tiny)[:, None]
    return torch.where(zero[:, None], torch.zeros_like(unit), unit), zero


def _pairs(layer: str, where: torch.Tensor, sims: torch.Tensor, transform: str | list[str]) -> list[Pair]:
    """Pairs (a < b) at the True entries of the strictly lower triangle of ``where`` (row b, column a)."""
    b, a = torch.nonzero(torch.tril(where, diagonal=-1), as_tuple=True)
    values = sims[b, a].tolist()
    names = transform if isinstance(transform, list) else None
    out = [Pair((layer, ai), (layer, bi), v, names[k] if names else transform)
           for k, (ai, bi, v) in enumerate(zip(a.tolist(), b.tolist(), values))]
    return sorted(out, key=lambda p: (-abs(p.similarity), p.a[1], p.b[1]))


def kernel_pairs(layer: str, weight: torch.Tensor, duplicate: float, rotated: float, opposite: float,
                 groups: int = 1) -> tuple[list[Pair], list[Pair], list[Pair], torch.Tensor]:
    """Duplicates, rotated copies and opposite pairs among the kernels ``weight`` (C_out×C_in/groups×h×w) of one
    layer, pairs only within a group, and which kernels are all zero. See the module doc for the rules."""
    unit, zero = _normalized(weight)
    group = torch.arange(len(weight), device=weight.device) // (len(weight) // groups)
    apart = group[:, None] != group[None, :]  # kernels of two groups read different channels: never a pair
    sims = (unit @ unit.T).masked_fill(apart, math.nan)  # sims[b, a] = cos(w_b, w_a); NaN fails every threshold
    duplicates = _pairs(layer, sims >= duplicate, sims, "identity")
    opposites = _pairs(layer, sims <= -opposite, sims, "negated")
    h, w = weight.shape[-2:]
    best = torch.full_like(sims, -2.0)
    which = torch.zeros(sims.shape, dtype=torch.long, device=sims.device)
    names = [n for n in TRANSFORMS if h == w or n not in SQUARE_ONLY] if h * w > 1 else []
    for k, name in enumerate(names):
        moved, _ = _normalized(TRANSFORMS[name](weight.detach()))
        turned = (unit @ moved.T).masked_fill(apart, -2.0)  # turned[b, a] = cos(w_b, T(w_a))
        symmetric = turned.diagonal() >= rotated  # a ≈ T(a): every copy of a would match under T
        turned = turned.masked_fill(symmetric[None, :], -2.0)
        better = turned > best
        best = torch.where(better, turned, best)
        which = torch.where(better, torch.full_like(which, k), which)
    found = torch.tril((best >= rotated) & (sims < duplicate), diagonal=-1)
    b, a = torch.nonzero(found, as_tuple=True)
    rotations = _pairs(layer, found, best, [names[k] for k in which[b, a].tolist()])
    return duplicates, rotations, opposites, zero


def _peaks(session: Session, watch: dict[str, str], data: Any, batch_size: int, steps: Steps
           ) -> tuple[dict[str, torch.Tensor], int]:
    """Per measured module, each unit's largest output over ``data`` (running max; the forward stops once
    every watched module has run), and the number of images seen."""
    modules = named_modules(session.net)
    peak: dict[str, torch.Tensor] = {}
    runs: dict[str, int] = {}
    needed: dict[str, int] = {}

    def record(name: str, _module: nn.Module, output: torch.Tensor) -> None:
        if output.dim() < 2:
            return
        top = output.detach().transpose(0, 1).flatten(1).amax(1).float()
        peak[name] = torch.maximum(peak[name], top) if name in peak else top
        runs[name] = runs.get(name, 0) + 1
        if needed and all(runs.get(n, 0) >= c for n, c in needed.items()):
            raise StopForward

    seen = 0
    targets = set(watch.values())
    with tensor_output_hooks({name: modules[name] for name in targets}, record), torch.no_grad():
        for raw in batches(data, batch_size):
            x = session.prepare(raw.images).x
            calls = {info.name: info.calls for info in session.layers(tuple(x.shape[-2:]))}
            needed.clear()
            needed.update({name: calls.get(name, 1) for name in targets})
            for part in session.heap_parts(x):
                runs.clear()
                try:
                    session.raw_forward(part)
                except StopForward:
                    pass
            seen += len(x)
            steps.advance()
    return {name: value.cpu() for name, value in peak.items()}, seen


@redone_when_weights_move
def filter_health(model: nn.Module, data: Any = None, layer: Any = None, *, duplicate: float = 0.95,
                  rotated: float = 0.95, opposite: float = 0.9, batch_size: int = 64,
                  progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> HealthReport:
    """Dead units, near-duplicate, rotated and opposite-phase filters of the first conv and ``layer``.

    ``data``: images to find dead units on (a dataset, DataLoader, tensor batch or list; None: only
    all-zero kernels count as dead). ``layer``: a Conv2d name or module, a block (every Conv2d inside it), a
    list of these, or ``"all"``.
    ``duplicate``/``rotated``/``opposite``: cosine-similarity thresholds in (0, 1]. ``batch_size`` images
    are read at a time and, on the CPU, run in heap-sized parts (:meth:`Session.heap_parts`). See the module
    doc.
    """
    thresholds = {"duplicate": _threshold(duplicate, "duplicate"), "rotated": _threshold(rotated, "rotated"),
                  "opposite": _threshold(opposite, "opposite")}
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int ≥ 1, got {batch_size!r}.")
    total = 0 if data is None else count(data)
    if data is not None and total == 0:
        raise ValueError("data is empty; give at least one image, or data=None to check the kernels only.")
    with look(model) as s:
        chosen = _chosen(s, layer)
        runs = 0 if data is None else len(data) if isinstance(data, DataLoader) else math.ceil(total / batch_size)
        steps = Steps(runs + len(chosen), progress, cancel)
        steps.check()
        watch = {name: _measured(s, name) for name in chosen}
        peaks, images = _peaks(s, watch, data, batch_size, steps) if data is not None else ({}, 0)
        report = HealthReport(list(chosen), {}, [], [], [], [], images, thresholds,
                              measured_at=dict(watch) if data is not None else {})
        if data is None:
            report.notes.append("no data given: activity not checked, only all-zero kernels count as dead")
        for name in chosen:
            weight = s.module(name).weight
            report.units[name] = int(weight.shape[0])
            dup, rot, opp, zero = kernel_pairs(name, weight, **thresholds, groups=s.module(name).groups)
            report.duplicates += dup
            report.rotated += rot
            report.opposite += opp
            dead = zero.cpu()
            if data is not None:
                if watch[name] in peaks:
                    report.peak[name] = peaks[watch[name]]
                    dead = dead | (peaks[watch[name]] <= 0)
                else:
                    report.notes.append(f"{name} did not run on the data: its activity was not checked")
            report.dead += [(name, int(u)) for u in torch.nonzero(dead).flatten().tolist()]
            steps.advance()
        return report
