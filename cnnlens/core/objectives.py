"""The objective algebra: one way to say "what to explain or maximise".

An :class:`Objective` maps the captured activations and the logits of one
forward to one scalar per batch item. Built-ins: :func:`channel`,
:func:`neuron`, :func:`logit`, :func:`prob`, :func:`direction`, and
``predicted()`` (the logit of each image's top class). They combine with
``+``, ``-``, unary ``-``, and ``*`` or ``/`` by numbers; ``"layer:unit"``
strings mean ``channel(layer, unit)`` and ints mean ``logit(int)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from numbers import Real
from typing import Any

import torch

Activations = Mapping[str, torch.Tensor]


def _check_index(value: int, size: int, what: str, argument: str) -> None:
    if not 0 <= value < size:
        raise ValueError(f"{argument}: {what} {value} is out of range; valid: 0..{size - 1}.")


def _per_item(index: int | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(index, device=device).long().reshape(-1)
    if t.numel() == 1:
        return t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"target: {t.numel()} per-image targets for a batch of {batch} images.")
    return t


class Objective:
    """A scalar per batch item, computed from ``(activations, logits)``."""

    layers: frozenset[str] = frozenset()
    description: str = "objective"

    def __call__(self, acts: Activations, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.description

    def __add__(self, other: Any) -> Objective:
        if isinstance(other, Real) and other == 0:
            return self  # lets sum() start from 0
        return _Sum([(1.0, self), (1.0, as_objective(other))])

    __radd__ = __add__

    def __sub__(self, other: Any) -> Objective:
        return _Sum([(1.0, self), (-1.0, as_objective(other))])

    def __rsub__(self, other: Any) -> Objective:
        return _Sum([(1.0, as_objective(other)), (-1.0, self)])

    def __neg__(self) -> Objective:
        return _Sum([(-1.0, self)])

    def __mul__(self, k: Any) -> Objective:
        if not isinstance(k, Real):
            raise TypeError(f"Objectives scale by numbers only, got {type(k).__name__}.")
        return _Sum([(float(k), self)])

    __rmul__ = __mul__

    def __truediv__(self, k: Any) -> Objective:
        if not isinstance(k, Real) or k == 0:
            raise TypeError(f"Objectives divide by non-zero numbers only, got {k!r}.")
        return _Sum([(1.0 / float(k), self)])


class _Sum(Objective):
    def __init__(self, terms: Sequence[tuple[float, Objective]]):
        flat: list[tuple[float, Objective]] = []
        for coef, term in terms:
            if isinstance(term, _Sum):
                flat += [(coef * c, t) for c, t in term.terms]
            else:
                flat.append((coef, term))
        self.terms = flat
        self.layers = frozenset().union(*(t.layers for _, t in flat))
        parts = [f"{'-' if c < 0 else '+'} {'' if abs(c) == 1 else f'{abs(c):g}·'}{t.description}" for c, t in flat]
        self.description = " ".join(parts).removeprefix("+ ")

    def __call__(self, acts: Activations, logits: torch.Tensor) -> torch.Tensor:
        return sum(c * t(acts, logits) for c, t in self.terms)


class Channel(Objective):
    """Mean activation of channel ``unit`` of ``layer`` (spatial mean for C×H×W outputs)."""

    def __init__(self, layer: str, unit: int):
        self.layer, self.unit = layer, int(unit)
        self.layers = frozenset({layer})
        self.description = f"{layer}:{self.unit}"

    def select(self, acts: Activations) -> torch.Tensor:
        """The unit's feature map (B×H×W) or value (B,)."""
        a = acts[self.layer]
        _check_index(self.unit, a.shape[1], f"unit of layer {self.layer!r} (it has {a.shape[1]} channels)", "target")
        return a[:, self.unit]

    def __call__(self, acts: Activations, logits: torch.Tensor) -> torch.Tensor:
        a = self.select(acts)
        return a.flatten(1).mean(1) if a.dim() > 1 else a


class Neuron(Objective):
    """One unit at one spatial position (the centre by default) of ``layer``'s channel ``unit``."""

    def __init__(self, layer: str, unit: int, y: int | None = None, x: int | None = None):
        self.layer, self.unit, self.y, self.x = layer, int(unit), y, x
        self.layers = frozenset({layer})
        where = "centre" if y is None and x is None else f"y={y}, x={x}"
        self.description = f"{layer}:{self.unit}@{where}"

    def __call__(self, acts: Activations, logits: torch.Tensor) -> torch.Tensor:
        a = acts[self.layer]
        _check_index(self.unit, a.shape[1], f"unit of layer {self.layer!r} (it has {a.shape[1]} channels)", "target")
        a = a[:, self.unit]
        if a.dim() == 1:
            return a
        y = a.shape[1] // 2 if self.y is None else self.y
        x = a.shape[2] // 2 if self.x is None else self.x
        _check_index(y, a.shape[1], "row y", "target")
        _check_index(x, a.shape[2], "column x", "target")
        return a[:, y, x]


class Logit(Objective):
    """The logit of class ``index`` (an int, or one per batch item)."""

    def __init__(self, index: int | Sequence[int] | torch.Tensor, name: str | None = None):
        self.index = index
        self.description = f"logit({name or index})"

    def __call__(self, acts: Activations, logits: torch.Tensor) -> torch.Tensor:
        if isinstance(self.index, int):
            _check_index(self.index, logits.shape[1], "class", "target")
            return logits[:, self.index]
        idx = _per_item(self.index, logits.shape[0], logits.device)
        for value in (int(idx.min()), int(idx.max())):
            _check_index(value, logits.shape[1], "class", "target")
        return logits.gather(1, idx[:, None])[:, 0]


class Prob(Logit):
    """The softmax probability of class ``index``."""

    def __init__(self, index: int | Sequence[int] | torch.Tensor, name: str | None = None):
        super().__init__(index, name)
        self.description = f"prob({name or index})"

    def __call__(self, acts: Activations, logits: torch.Tensor) -> torch.Tensor:
        return super().__call__(acts, torch.softmax(logits, dim=1))


class Predicted(Objective):
    """The logit of each image's top class in this very forward (no extra pass needed)."""

    description = "predicted class"

    def __call__(self, acts: Activations, logits: torch.Tensor) -> torch.Tensor:
        return logits.gather(1, logits.detach().argmax(1, keepdim=True))[:, 0]


class Direction(Objective):
    """Spatial mean of the dot product between ``layer``'s activation vectors and ``vector``."""

    def __init__(self, layer: str, vector: torch.Tensor | Sequence[float]):
        self.layer = layer
        self.vector = torch.as_tensor(vector, dtype=torch.float32).flatten()
        self.layers = frozenset({layer})
        self.description = f"direction({layer}, {self.vector.numel()}-d)"

    def __call__(self, acts: Activations, logits: torch.Tensor) -> torch.Tensor:
        a = acts[self.layer]
        if a.shape[1] != self.vector.numel():
            raise ValueError(f"target: direction has {self.vector.numel()} entries but layer {self.layer!r} "
                             f"has {a.shape[1]} channels.")
        v = self.vector.to(a).view(1, -1, *([1] * (a.dim() - 2)))
        return (a * v).sum(1).flatten(1).mean(1) if a.dim() > 2 else (a * v).sum(1)


class Custom(Objective):
    """Any function ``fn(activations, logits) -> B`` over the named ``layers``."""

    def __init__(self, fn: Callable[[Activations, torch.Tensor], torch.Tensor], layers: Sequence[str] = (),
                 description: str = "custom"):
        self.fn = fn
        self.layers = frozenset(layers)
        self.description = description

    def __call__(self, acts: Activations, logits: torch.Tensor) -> torch.Tensor:
        return self.fn(acts, logits)


def channel(layer: str, unit: int) -> Objective:
    """Mean activation of one channel (feature map) of ``layer``."""
    return Channel(layer, unit)


def neuron(layer: str, unit: int, y: int | None = None, x: int | None = None) -> Objective:
    """One spatial unit of a channel; the centre when ``y``/``x`` are None."""
    return Neuron(layer, unit, y, x)


def logit(index: int | Sequence[int]) -> Objective:
    """The logit of a class (or one class per batch item)."""
    return Logit(index)


def prob(index: int | Sequence[int]) -> Objective:
    """The softmax probability of a class."""
    return Prob(index)


def direction(layer: str, vector: torch.Tensor | Sequence[float]) -> Objective:
    """A direction in ``layer``'s channel space."""
    return Direction(layer, vector)


def predicted() -> Objective:
    """Each image's top-predicted class logit."""
    return Predicted()


def as_objective(target: Any, class_name: Callable[[int], str] | None = None) -> Objective:
    """``None`` → predicted class; int (or ints) → logit; ``"layer:unit"`` → channel; Objective → itself."""
    if target is None:
        return Predicted()
    if isinstance(target, Objective):
        return target
    if isinstance(target, bool):
        raise TypeError("target must be a class index, 'layer:unit', an Objective or None; got a bool.")
    if isinstance(target, int):
        return Logit(target, f"{target}: {class_name(target)}" if class_name else None)
    if isinstance(target, str):
        layer, sep, unit = target.rpartition(":")
        if not sep or not layer or not unit.lstrip("-").isdigit():
            raise ValueError(f"target {target!r}: use 'layer:unit' (e.g. 'stage3:5'), a class index, or an Objective.")
        return Channel(layer, int(unit))
    if isinstance(target, torch.Tensor) and target.dim() == 0:
        return as_objective(int(target), class_name)
    if isinstance(target, (list, tuple, torch.Tensor)) and all(isinstance(int(t), int) for t in target):
        return Logit(torch.as_tensor(target).long(), None)
    raise TypeError(f"target must be a class index, a list of indices, 'layer:unit', an Objective or None; "
                    f"got {type(target).__name__}.")
