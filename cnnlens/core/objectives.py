"""The objective algebra: one way to say "what to explain or maximise".

An :class:`Objective` maps one forward's :class:`Context` (the input images,
the captured activations and the logits) to one scalar per batch item.
Built-ins: :func:`channel`, :func:`neuron`, :func:`logit`, :func:`prob`,
:func:`direction`, and ``predicted()`` (the logit of each image's top class).
They combine with ``+`` and ``-`` (with each other and with numbers, either
way round), unary ``-``, and ``*`` or ``/`` by numbers; ``"layer:unit"``
strings mean ``channel(layer, unit)`` and ints mean ``logit(int)``.

Every method rewrites targets through the same operations of the objective
itself, so sums and scaled objectives recurse by construction:

- :meth:`Objective.bind`: "predicted class" pinned to the class predicted on
  the clean input (methods that perturb the input explain that class);
- :meth:`Objective.tile`: the objective for ``k`` stacked copies of a batch;
- :meth:`Objective.select`: image ``i``'s part of a per-image objective;
- :meth:`Objective.probability`: class logits replaced by class probabilities.

``needs_logits`` tells whether the objective reads the model's output at all;
when it does not (a feature-map target), the forward stops after the deepest
layer it needs, which also lets a backbone with no class head be explained.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np
import torch

Activations = Mapping[str, torch.Tensor]


@dataclass
class Context:
    """What one forward offers an objective: the [0, 1] input, captured activations, and logits (None when the
    objective needs none and the forward stopped early)."""

    input: torch.Tensor | None
    activations: Activations
    logits: torch.Tensor | None

    @property
    def batch(self) -> int:
        for t in (self.input, self.logits, *self.activations.values()):
            if t is not None:
                return t.shape[0]
        raise ValueError("The objective has nothing to read: no input, activation or logits in its context.")

    def reference(self) -> torch.Tensor:
        """A tensor of the forward (for device and dtype)."""
        for t in (self.logits, self.input, *self.activations.values()):
            if t is not None:
                return t
        raise ValueError("The objective has nothing to read: no input, activation or logits in its context.")


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


def class_probabilities(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Class probabilities from ``logits`` along ``dim``: the softmax, or for a model with one output score (a
    binary head) its sigmoid, the probability of that class (a softmax over one score is always 1)."""
    return torch.sigmoid(logits) if logits.shape[dim] == 1 else torch.softmax(logits, dim=dim)


def class_log_probabilities(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """The log of :func:`class_probabilities`, computed stably (log-softmax, or log-sigmoid for one score)."""
    return torch.nn.functional.logsigmoid(logits) if logits.shape[dim] == 1 else torch.log_softmax(logits, dim=dim)


def _logits_of(ctx: Context, what: str) -> torch.Tensor:
    if ctx.logits is None:
        raise ValueError(f"target {what} needs the model's class scores, and this model's output is not B×K "
                         "logits; use a feature-map target ('layer:unit', cl.channel, cl.neuron, cl.direction).")
    return ctx.logits


class Objective:
    """A scalar per batch item, computed from one forward's :class:`Context`."""

    layers: frozenset[str] = frozenset()
    needs_logits: bool = True
    description: str = "objective"

    def evaluate(self, ctx: Context) -> torch.Tensor:
        """One value per batch item (subclasses implement this)."""
        raise NotImplementedError

    def __call__(self, ctx: Context | Activations, logits: torch.Tensor | None = None) -> torch.Tensor:
        """``objective(context)``, or ``objective(activations, logits)`` as in earlier versions."""
        if not isinstance(ctx, Context):
            ctx = Context(None, ctx, logits)
        return self.evaluate(ctx)

    def __repr__(self) -> str:
        return self.description

    # --- rewriting, the same for every method ---------------------------------------------------

    def bind(self, logits: torch.Tensor | None) -> Objective:
        """This objective with "predicted class" pinned to the classes ``logits`` (the clean input's) predict."""
        return self

    def tile(self, k: int) -> Objective:
        """The objective for a batch made of ``k`` stacked copies of the original batch."""
        return self

    def select(self, i: int) -> Objective:
        """Image ``i``'s part of the objective (its own class where classes are given per image)."""
        return self

    def probability(self) -> Objective:
        """Class logits replaced by class probabilities (what occlusion and LIME map for a class)."""
        return self

    # --- algebra ------------------------------------------------------------------------------

    def __add__(self, other: Any) -> Objective:
        if isinstance(other, Real) and not isinstance(other, bool) and other == 0:
            return self  # lets sum() start from 0
        return _Sum([(1.0, self), (1.0, as_objective_term(other))])

    def __radd__(self, other: Any) -> Objective:
        if isinstance(other, Real) and not isinstance(other, bool) and other == 0:
            return self
        return _Sum([(1.0, as_objective_term(other)), (1.0, self)])

    def __sub__(self, other: Any) -> Objective:
        return _Sum([(1.0, self), (-1.0, as_objective_term(other))])

    def __rsub__(self, other: Any) -> Objective:
        return _Sum([(1.0, as_objective_term(other)), (-1.0, self)])

    def __neg__(self) -> Objective:
        return _Sum([(-1.0, self)])

    def __mul__(self, k: Any) -> Objective:
        if not isinstance(k, Real) or isinstance(k, bool) or not np.isfinite(float(k)):
            raise TypeError(f"Objectives scale by finite numbers only, got {k!r}.")
        return _Sum([(float(k), self)])

    __rmul__ = __mul__

    def __truediv__(self, k: Any) -> Objective:
        if not isinstance(k, Real) or isinstance(k, bool) or k == 0 or not np.isfinite(float(k)):
            raise TypeError(f"Objectives divide by finite non-zero numbers only, got {k!r}.")
        return _Sum([(1.0 / float(k), self)])


class Constant(Objective):
    """A number, the same for every batch item (``2 + cl.prob(3)``)."""

    needs_logits = False

    def __init__(self, value: float):
        self.value = float(value)
        self.description = f"{self.value:g}"

    def evaluate(self, ctx: Context) -> torch.Tensor:
        ref = ctx.reference()
        return torch.full((ctx.batch,), self.value, device=ref.device, dtype=ref.dtype)


def as_objective_term(value: Any) -> Objective:
    """A term of a sum: a number becomes a :class:`Constant`, anything else a target."""
    if isinstance(value, Real) and not isinstance(value, bool):
        return Constant(value)
    return as_objective(value)


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
        self.needs_logits = any(t.needs_logits for _, t in flat)
        parts = []
        for c, t in flat:
            if isinstance(t, Constant):
                value = c * t.value
                parts.append(f"{'-' if value < 0 else '+'} {abs(value):g}")
            else:
                parts.append(f"{'-' if c < 0 else '+'} {'' if abs(c) == 1 else f'{abs(c):g}·'}{t.description}")
        self.description = " ".join(parts).removeprefix("+ ")
        if self.description.startswith("- "):
            self.description = "-" + self.description[2:]

    def evaluate(self, ctx: Context) -> torch.Tensor:
        return sum(c * t.evaluate(ctx) for c, t in self.terms)

    def _map(self, fn: Callable[[Objective], Objective]) -> Objective:
        terms = [(c, fn(t)) for c, t in self.terms]
        if all(new is old for (_, new), (_, old) in zip(terms, self.terms)):
            return self
        return _Sum(terms)

    def bind(self, logits: torch.Tensor | None) -> Objective:
        return self._map(lambda t: t.bind(logits))

    def tile(self, k: int) -> Objective:
        return self._map(lambda t: t.tile(k))

    def select(self, i: int) -> Objective:
        return self._map(lambda t: t.select(i))

    def probability(self) -> Objective:
        return self._map(lambda t: t.probability())


def _whole(value: Any, argument: str) -> int:
    """``value`` as an int when it is one (Python or NumPy integer), else a TypeError naming ``argument``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{argument} must be an int, got {value!r}.")
    return int(value)


class Channel(Objective):
    """Mean activation of channel ``unit`` of ``layer`` (spatial mean for C×H×W outputs)."""

    needs_logits = False

    def __init__(self, layer: str, unit: int):
        self.layer, self.unit = layer, _whole(unit, "unit")
        self.layers = frozenset({layer})
        self.description = f"{layer}:{self.unit}"

    def select_map(self, acts: Activations) -> torch.Tensor:
        """The unit's feature map (B×H×W) or value (B,)."""
        a = acts[self.layer]
        _check_index(self.unit, a.shape[1], f"unit of layer {self.layer!r} (it has {a.shape[1]} channels)", "target")
        return a[:, self.unit]

    def evaluate(self, ctx: Context) -> torch.Tensor:
        a = self.select_map(ctx.activations)
        return a.flatten(1).mean(1) if a.dim() > 1 else a


class Neuron(Objective):
    """One unit at one spatial position (the centre by default) of ``layer``'s channel ``unit``."""

    needs_logits = False

    def __init__(self, layer: str, unit: int, y: int | None = None, x: int | None = None):
        self.layer, self.unit = layer, _whole(unit, "unit")
        self.y, self.x = (None if v is None else _whole(v, name) for v, name in ((y, "y"), (x, "x")))
        self.layers = frozenset({layer})
        where = "centre" if y is None and x is None else f"y={y}, x={x}"
        self.description = f"{layer}:{self.unit}@{where}"

    def evaluate(self, ctx: Context) -> torch.Tensor:
        a = ctx.activations[self.layer]
        _check_index(self.unit, a.shape[1], f"unit of layer {self.layer!r} (it has {a.shape[1]} channels)", "target")
        a = a[:, self.unit]
        if a.dim() == 1:
            if self.y is not None or self.x is not None:
                raise ValueError(f"target: layer {self.layer!r} has no spatial grid, so a neuron there has no y or "
                                 f"x; use cl.channel({self.layer!r}, {self.unit}).")
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
        self.description = f"{self._kind}({name or _shown(checked)})"

    _kind = "logit"

    def _with_index(self, index: int | torch.Tensor, name: str | None) -> Logit:
        clone = copy.copy(self)
        clone.index = index
        clone.name = name
        clone.description = f"{self._kind}({name or _shown(index)})"
        return clone

    def classes(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The class of each of ``batch`` images."""
        return _per_item(self.index, batch, torch.device(device))

    def tile(self, k: int) -> Objective:
        if isinstance(self.index, torch.Tensor) and self.index.numel() > 1:
            return self._with_index(self.index.repeat(k), self.name)
        return self

    def select(self, i: int) -> Objective:
        if isinstance(self.index, torch.Tensor) and self.index.numel() > 1:
            return self._with_index(int(self.index[i]), None)
        return self

    def probability(self) -> Objective:
        return Prob(self.index, self.name)

    def check(self, classes: int) -> None:
        """A ValueError naming ``target`` when a class index is outside ``0..classes-1``."""
        values = [self.index] if isinstance(self.index, int) else [int(self.index.min()), int(self.index.max())]
        for value in values:
            _check_index(value, classes, "class", "target")

    def _scores(self, ctx: Context) -> torch.Tensor:
        return _logits_of(ctx, self.description)

    def evaluate(self, ctx: Context) -> torch.Tensor:
        scores = self._scores(ctx)
        self.check(scores.shape[1])
        if isinstance(self.index, int):
            return scores[:, self.index]
        idx = _per_item(self.index, scores.shape[0], scores.device)
        return scores.gather(1, idx[:, None])[:, 0]


class Prob(Logit):
    """The probability of class ``index`` (:func:`class_probabilities`: softmax, or a single score's sigmoid)."""

    _kind = "prob"

    def probability(self) -> Objective:
        return self

    def _scores(self, ctx: Context) -> torch.Tensor:
        return class_probabilities(_logits_of(ctx, self.description))


class Predicted(Objective):
    """The logit of each image's top class in this very forward; :meth:`bind` pins it to the clean input's."""

    description = "predicted class"

    def evaluate(self, ctx: Context) -> torch.Tensor:
        logits = _logits_of(ctx, self.description)
        return logits.gather(1, logits.detach().argmax(1, keepdim=True))[:, 0]

    def bind(self, logits: torch.Tensor | None) -> Objective:
        if logits is None:
            return self
        top = logits.detach().argmax(1).cpu()
        return Logit(int(top[0]) if len(top) == 1 else top, "predicted class")

    def probability(self) -> Objective:
        raise ValueError("target: bind the predicted class to the clean input before taking its probability.")


class Direction(Objective):
    """Spatial mean of the dot product between ``layer``'s activation vectors and ``vector``."""

    needs_logits = False

    def __init__(self, layer: str, vector: torch.Tensor | Sequence[float]):
        self.layer = layer
        try:
            self.vector = torch.as_tensor(vector, dtype=torch.float32).flatten()
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"vector must be a tensor or a sequence of numbers (one per channel of {layer!r}), got "
                            f"{type(vector).__name__}.") from None
        if not torch.isfinite(self.vector).all():
            raise ValueError("vector: a direction's entries must be finite numbers (it has NaN or Inf).")
        self.layers = frozenset({layer})
        self.description = f"direction({layer}, {self.vector.numel()}-d)"

    def evaluate(self, ctx: Context) -> torch.Tensor:
        a = ctx.activations[self.layer]
        if a.shape[1] != self.vector.numel():
            raise ValueError(f"target: direction has {self.vector.numel()} entries but layer {self.layer!r} "
                             f"has {a.shape[1]} channels.")
        v = self.vector.to(a).view(1, -1, *([1] * (a.dim() - 2)))
        return (a * v).sum(1).flatten(1).mean(1) if a.dim() > 2 else (a * v).sum(1)


class Custom(Objective):
    """Any function ``fn(activations, logits) -> B`` over the named ``layers`` (or ``fn(context)`` with
    ``context=True``); ``needs_logits=False`` lets the forward stop after its layers."""

    def __init__(self, fn: Callable[..., torch.Tensor], layers: Sequence[str] = (),
                 description: str = "custom", *, needs_logits: bool = True, context: bool = False):
        self.fn = fn
        self.layers = frozenset(layers)
        self.description = description
        self.needs_logits = needs_logits
        self.context = context

    def evaluate(self, ctx: Context) -> torch.Tensor:
        return self.fn(ctx) if self.context else self.fn(ctx.activations, ctx.logits)


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
    """The probability of a class (softmax; for a model with one output score, its sigmoid)."""
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
