"""The one optimization loop every synthesis method runs.

Each step: the parametrization makes the image, the transforms jitter it,
the shadow network runs it (stopping after the deepest layer the objective
reads), and the gradient of the per-image scores with respect to the
parametrization's own tensors (never the model's) moves the image. When some
image gets no gradient at all from the first step, the first steps use
Lucid's redirected ReLU rule, so a unit that is silent on the starting image
still wakes up; otherwise the plain gradient throughout (the rule's function
mode costs Python time on every op, so it runs only when needed). Progress,
cancellation and partial images go through the same channels as every long
method.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..core.hooks import capture
from ..core.objectives import Context, Objective
from ..core.progress import Steps
from ..core.relu_rules import ReLURule
from ..core.session import Session
from .regularizers import StepRules
from .transforms import Transform

Score = Callable[[Context], torch.Tensor]
WAKE_STEPS = 16  # steps with Lucid's redirected ReLU gradient (a unit silent at the start can wake up)


@dataclass
class Loop:
    """What one optimization needs besides the session and the parametrization."""

    objective: Objective  # what the forward must provide (its layers, whether it reads logits)
    score: Score  # per-image values to maximize, from one forward's context
    steps: int
    optimizer: str
    lr: float
    rules: StepRules
    transform: Transform | None
    size: tuple[int, int]
    extra_layers: frozenset[str] = frozenset()


def _gradient(session: Session, param: Any, loop: Loop, rule: ReLURule | None
              ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """One forward-backward: the per-image scores and their gradient for the parametrization's tensors."""
    with torch.enable_grad():
        image = param()
        x = loop.transform(image) if loop.transform is not None else image
        if tuple(x.shape[-2:]) != loop.size:
            x = F.interpolate(x, size=loop.size, mode="bilinear", align_corners=False)
        with capture(session.net, loop.objective.layers | loop.extra_layers) as cap, rule or nullcontext():
            logits = session.run(x, loop.objective, cap, also=tuple(loop.extra_layers))
            values = loop.score(Context(image, cap.activations, logits))
        return values, torch.autograd.grad(values.sum(), param.parameters())


def _silent(grads: tuple[torch.Tensor, ...]) -> bool:
    """Whether some image got no gradient at all (its unit is silent on it)."""
    return bool(torch.stack([g.flatten(1).abs().amax(1) for g in grads]).amax(0).eq(0).any())


def optimize(session: Session, param: Any, loop: Loop, counter: Steps,
             partial: Callable[[torch.Tensor, int, torch.Tensor], None] | None = None,
             partial_every: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``loop`` on ``param``: (final images N×C×H×W in [0, 1], history steps×N of the scores)."""
    tensors = param.parameters()
    fused = tensors[0].device.type in ("cpu", "cuda")  # one kernel for the whole update
    adam = torch.optim.Adam(tensors, lr=loop.lr, fused=fused) if loop.optimizer == "adam" else None
    first_scale: torch.Tensor | None = None
    history = []
    waking = False
    counter.check()  # a job cancelled before it started runs no step
    for step in range(loop.steps):
        rule = ReLURule("redirected") if waking and step < WAKE_STEPS else None
        values, grads = _gradient(session, param, loop, rule)
        if step == 0 and _silent(grads):
            waking = True
            values, grads = _gradient(session, param, loop, ReLURule("redirected"))
        history.append(values.detach().float().cpu())
        with torch.no_grad():
            if adam is not None:
                for t, g in zip(tensors, grads):
                    t.grad = -g
                adam.step()
            else:
                for t, g in zip(tensors, grads):
                    g = loop.rules.gradient(g)
                    if not loop.rules.normalize:
                        if first_scale is None:
                            rms = g.pow(2).flatten(1).mean(1).sqrt().clamp(min=1e-12)
                            first_scale = rms.view(-1, *([1] * (g.dim() - 1)))
                        g = g / first_scale
                    t.add_(loop.lr * g)
            if loop.rules.changes_pixels and hasattr(param, "tensor"):
                loop.rules.after_step(param.tensor, grads[0], step)
            param.constrain()
        counter.advance(1)
        if partial is not None and (step + 1) % partial_every == 0 and step + 1 < loop.steps:
            with torch.no_grad():
                partial(param().detach().cpu(), step + 1, torch.stack(history))
    with torch.no_grad():
        return param().detach(), torch.stack(history) if history else torch.zeros(0)
