"""Shared steps of the local-explanation methods: targets, input gradients, results."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import Any

import torch

from ..core.hooks import capture
from ..core.images import Batch, resize_map
from ..core.objectives import Context, Objective, as_objective
from ..core.progress import Steps
from ..core.relu_rules import ReLURule
from ..core.results import Explanation
from ..core.session import Session


def objective_for(session: Session, target: Any, size: tuple[int, int]) -> Objective:
    """The target as an Objective, with every layer it names checked against the model."""
    objective = as_objective(target, session.spec.classes)
    for name in objective.layers:
        if session.is_shadow:
            session.check_layer_name(name)
        else:
            session.layer(name, size, spatial=False, argument="target layer")  # the TorchScript error
    return objective


def generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A private RNG (the global one is never touched); fresh entropy when ``seed`` is None."""
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}.")
    gen = torch.Generator(device=device)
    gen.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(7), "little"))
    return gen


def positive_int(value: Any, argument: str, minimum: int = 1) -> int:
    """``value`` as an int ≥ ``minimum``, or a ValueError/TypeError naming ``argument``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{argument} must be an int, got {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"{argument} must be ≥ {minimum}, got {value}.")
    return value


def boolean(value: Any, argument: str) -> bool:
    """``value`` when it is True or False, else a TypeError naming ``argument`` (a string such as "no" is true)."""
    if not isinstance(value, bool):
        raise TypeError(f"{argument} must be True or False, got {value!r}.")
    return value


def input_gradient(session: Session, x: torch.Tensor, objective: Objective, rule: str | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """d objective / d x for each image (one forward + one backward), and the forward's logits."""
    if rule and not session.is_shadow:
        raise TypeError(f"The {rule} rule cannot reach the ReLUs inside a TorchScript model; "
                        "pass the eager nn.Module (or use saliency, which needs no rule).")
    x = x.detach().requires_grad_(True)
    relu_rule = ReLURule(rule) if rule else None
    with torch.enable_grad(), capture(session.net, objective.layers) as cap, (relu_rule or nullcontext()):
        logits = session.run(x, objective, cap)
        score = objective(Context(x, cap.activations, logits))
        (grad,) = torch.autograd.grad(score.sum(), x)
    if relu_rule is not None and relu_rule.calls == 0:
        warnings.warn(f"The model made no ReLU call, so the {rule} rule changed nothing: this is the plain "
                      "gradient (guided backprop and DeconvNet are defined for ReLU networks).", stacklevel=3)
    return grad, None if logits is None else logits.detach()


def clean_logits(session: Session, x: torch.Tensor, objective: Objective) -> torch.Tensor | None:
    """The clean input's logits (no graph) when the objective needs them, for :meth:`Objective.bind`."""
    if not objective.needs_logits:
        return None
    with torch.no_grad():
        return session.logits(x)


def output_size(batch: Batch) -> tuple[int, int]:
    """The resolution maps come back at: the images' own size when they share one, else the model's."""
    return batch.sizes[0] if len(set(batch.sizes)) == 1 else tuple(batch.x.shape[-2:])


def explanation(session: Session, batch: Batch, maps: torch.Tensor, raw: torch.Tensor | None, *,
                method: str, objective: Objective, layer: str | None, params: Mapping[str, Any],
                logits: torch.Tensor | None, extras: Mapping[str, Any] | None = None,
                label_maps: tuple[str, ...] = (), resized: tuple[str, ...] = (), keep_dtype: bool = False
                ) -> Explanation:
    """Package B×h×w maps as an :class:`Explanation` at the input's resolution.

    ``extras`` hold per-image values (batch-first tensors or lists); for one
    image the batch dimension is dropped everywhere. ``label_maps`` names the
    extras that are categorical maps (resized by nearest neighbour),
    ``resized`` the continuous maps resized like ``maps``; ``keep_dtype`` keeps a float64 map in float64.
    """
    size = output_size(batch)
    maps = resize_map(maps.detach() if keep_dtype else maps.detach().float(), size).cpu()
    extras = dict(extras or {})
    for key in label_maps:
        extras[key] = resize_map(extras[key], size, mode="nearest").cpu()
    for key in resized:
        extras[key] = resize_map(extras[key].float(), size).cpu()
    predictions = session.predictions(logits, batch=len(batch.x))
    if raw is not None:
        raw = raw.detach().cpu()
    if batch.single:
        maps, predictions = maps[0], predictions[0]
        raw = raw[0] if raw is not None else None
        extras = {k: v[0] for k, v in extras.items()}
    return Explanation(map=maps, raw=raw, method=method, target=objective.description, layer=layer,
                       params=dict(params), predictions=predictions, extras=extras)


def summed_gradients(session: Session, points: torch.Tensor, objective: Objective, weights: torch.Tensor,
                     batch_size: int, steps: Steps, transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     after_chunk: Callable[[torch.Tensor, int], None] | None = None) -> torch.Tensor:
    """Σ_s weights[s] · transform(d objective / d x) at ``points[s]`` (S×B×C×H×W).

    Gradients are taken in chunks of about ``batch_size`` images; each chunk
    advances ``steps`` (progress and cancellation) by its number of points, and
    ``after_chunk(total so far, points done)`` sees every chunk but the last.
    """
    n_points, b = points.shape[:2]
    per_chunk = max(batch_size // b, 1)
    total = torch.zeros_like(points[0])
    for start in range(0, n_points, per_chunk):
        chunk = points[start:start + per_chunk]
        k = chunk.shape[0]
        grad, _ = input_gradient(session, chunk.reshape(k * b, *chunk.shape[2:]), objective.tile(k))
        if transform is not None:
            grad = transform(grad)
        w = weights[start:start + k].to(grad).view(k, 1, *([1] * (grad.dim() - 1)))
        total += (grad.view(k, b, *grad.shape[1:]) * w).sum(0)
        steps.advance(k)
        if after_chunk is not None and start + k < n_points:
            after_chunk(total, start + k)
    return total
