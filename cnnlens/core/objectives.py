"""The objective algebra: one way to say "what to explain or maximise".

An :class:`Objective` maps the captured activations and the logits of one
forward to one scalar per batch item. Built-ins: :func:`channel`,
:func:`neuron`, :func:`logit`, :func:`prob`, :func:`direction`, and
``predicted()`` (the logit of each image's top class). They combine with
``+``, ``-``, unary ``-``, and ``*`` or ``/`` by numbers; ``"layer:unit"``
strings mean ``channel(layer, unit)`` and ints mean ``logit(int)``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from numbers import Real
from typing import Any

import numpy as np
import torch

Activations = Mapping[str, torch.Tensor]


def _check_index(value: int, size: int, what: str, argument: str) -> None:
    if not 0 <= value < size:
        raise ValueError(f"{argument}: {what} {value} is out of range; valid: 0..{size - 1}.")


def _shown(index: int | torch.Tensor) -> str:
    return str(index.tolist() if isinstance(index, torch.Tensor) else index)


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
        checked = _class_indices(index)
        if checked is None:
            raise TypeError(f"index must be a class index (int) or one int per image, got {index!r}; "
                            "a class name works as a method's target= when the model has class names.")
        self.index = checked
        self.name = name
        self.description = f"logit({name or _shown(checked)})"

    def probability(self) -> Prob:
        """The same class(es), through the softmax (what occlusion and LIME map)."""
        return Prob(self.index, self.name)

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
        self.description = f"prob({name or _shown(self.index)})"

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


def _class_indices(target: Any) -> int | torch.Tensor | None:
    """``target`` as a class index (int) or indices (1-d long tensor) when it is made of integers, else None."""
    if isinstance(target, (bool, np.bool_)):
        return None
    if isinstance(target, (int, np.integer)):
        return int(target)
    if isinstance(target, (list, tuple)) and target and all(
            isinstance(t, (int, np.integer)) and not isinstance(t, (bool, np.bool_)) for t in target):
        return torch.tensor([int(t) for t in target])
    if isinstance(target, np.ndarray) and np.issubdtype(target.dtype, np.integer) and target.size:
        target = torch.from_numpy(target.copy())
    if isinstance(target, torch.Tensor) and target.numel() and not target.is_floating_point() \
            and not target.is_complex() and target.dtype != torch.bool and target.dim() <= 1:
        return int(target) if target.dim() == 0 else target.long().cpu()
    return None


def _class_by_name(name: str, classes: Sequence[str] | None) -> int | None:
    if classes is not None and name in classes:
        return list(classes).index(name)
    return None


def as_objective(target: Any, classes: Sequence[str] | None = None) -> Objective:
    """What to explain, as an Objective.

    ``None`` → predicted class; an int, numpy int or integer tensor/list/array
    (one per image) → logit; a class name (from ``configure(classes=...)``) →
    its logit; ``"layer:unit"`` → channel; an Objective → itself.
    """
    if target is None:
        return Predicted()
    if isinstance(target, Objective):
        return target
    index = _class_indices(target)
    if isinstance(index, int):
        name = classes[index] if classes is not None and 0 <= index < len(classes) else None
        return Logit(index, f"{index}: {name}" if name else None)
    if index is not None:
        return Logit(index, None)
    if isinstance(target, str):
        by_name = _class_by_name(target, classes)
        if by_name is not None:
            return Logit(by_name, f"{by_name}: {target}")
        layer, sep, unit = target.rpartition(":")
        if sep and layer and unit.lstrip("-").isdigit():
            return Channel(layer, int(unit))
        hint = ""
        if classes is not None:
            close = difflib.get_close_matches(target, list(classes), n=1)
            shown = ", ".join(list(classes)[:12]) + (", …" if len(classes) > 12 else "")
            hint = f" Class names: {shown}." + (f" Did you mean {close[0]!r}?" if close else "")
        raise ValueError(f"target {target!r} is neither a class name nor 'layer:unit' (e.g. 'stage3:5').{hint}")
    raise TypeError("target must be a class index (int), a class name, one index per image, 'layer:unit', "
                    f"an Objective or None; got {type(target).__name__}"
                    + (f" {target!r}" if isinstance(target, (float, bool)) else "") + ".")
