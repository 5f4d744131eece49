"""Activation maximization and class visualization: the images a unit or a class responds to most.

One batched optimization covers every target and start: image ``i`` is
scored only by its own target (``targets[i // starts]``), so N units cost
about one forward-backward of N images per step. A class target (a class
index or name, ``cl.logit``, ``cl.prob``) is a class visualization
(Simonyan et al. 2014) and the result reports the model's confidence;
with ``preset="raw"`` such images are Nguyen et al.'s fooling images.
``diversity`` subtracts the mean cosine similarity between the Gram matrices
of the starts of one target at the target's layer (Olah et al. 2017): the
deepest layer its objective reads, the last spatial layer for a class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..core.objectives import Context, Logit, Objective, _Sum, class_probabilities
from ..core.progress import CancelToken, ProgressFn, Steps
from ..core.results import Synthesis
from ..core.session import Session, look, redone_when_weights_move
from ..explain._common import generator, objective_for, positive_int
from .param import FourierImage, PixelImage
from .presets import Preset
from .presets import preset as named_preset
from .render import Loop, optimize
from .transforms import Transform, compose, standard

PARAMS = ("pixel", "fourier")


def _size(size: Any, session: Session) -> tuple[int, int]:
    if size is None:
        return tuple(session.spec.input_size or (128, 128))
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 8 for v in size)):
        raise ValueError(f"size must be an int ≥ 8 or (H, W), got {size!r}.")
    return tuple(size)


def _param(kind: str, chosen: Preset, shape: tuple[int, int, int, int], gen: torch.Generator,
           device: torch.device):
    if kind == "pixel":
        return PixelImage(shape, gen, device, init=chosen.init)
    if kind == "fourier":
        return FourierImage(shape, gen, device, decay_power=chosen.decay_power)
    raise ValueError(f"Unknown param {kind!r}. Valid: {', '.join(PARAMS)}.")


def _transform(transforms: Any, chosen: Preset, side: int, gen: torch.Generator,
               out: tuple[int, int]) -> Transform | None:
    if transforms is None:
        return compose(standard(side, gen, chosen.transforms, out)) if chosen.transforms else None
    if transforms is False:
        return None
    if callable(transforms):
        return transforms
    if isinstance(transforms, Sequence) and all(callable(t) for t in transforms):
        return compose(list(transforms)) if transforms else None
    raise TypeError("transforms must be None (the preset's), False, a callable or a list of callables "
                    f"(tensor → tensor); got {type(transforms).__name__}.")


def _gram_similarity(acts: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Per image, the mean cosine similarity of its Gram matrix with the other images of its group (a layer
    without a grid, B×C, has one position: the Gram matrix of its vector)."""
    flat = acts.flatten(2) if acts.dim() > 2 else acts[:, :, None]
    gram = torch.einsum("bcn,bdn->bcd", flat, flat).flatten(1) / flat.shape[-1]
    gram = torch.nn.functional.normalize(gram, dim=1)
    sim = gram @ gram.T
    same = (groups[:, None] == groups[None, :]).to(sim) - torch.eye(len(groups), device=sim.device)
    return (sim * same).sum(1) / same.sum(1).clamp(min=1)


def _target_layer(session: Any, objective: Objective, size: tuple[int, int]) -> str:
    """The layer a target's diversity is measured at: the deepest its objective reads, else the last spatial one."""
    if not objective.layers:
        return session.layer(None, size).name
    order = {info.name: i for i, info in enumerate(session.layers(size))}
    return max(objective.layers, key=lambda name: order.get(name, -1))


@redone_when_weights_move
def visualize(model: torch.nn.Module, target: Any, *, preset: str = "lucid", strength: float | None = None,
              size: int | tuple[int, int] | None = None, steps: int | None = None, param: str | None = None,
              transforms: Any = None, starts: int = 1, diversity: float = 0.0, seed: int | None = None,
              progress: ProgressFn | None = None, cancel: CancelToken | None = None,
              partial: Callable[[Synthesis], None] | None = None) -> Synthesis:
    """Optimize images that maximize ``target`` (a unit, a class, any objective; a list: one image each).

    See the module doc; ``preset`` picks the school (``cnnlens.synthesize.PRESETS``), ``strength`` in [0, 1]
    its regularization (0.5 = published), ``starts`` random starts per target.
    """
    chosen = named_preset(preset).at(strength)
    starts = positive_int(starts, "starts")
    steps = chosen.steps if steps is None else positive_int(steps, "steps")
    if not isinstance(diversity, (int, float)) or isinstance(diversity, bool) or diversity < 0:
        raise ValueError(f"diversity must be a number ≥ 0, got {diversity!r}.")
    if partial is not None and not callable(partial):
        raise TypeError(f"partial must be a callable or None, got {type(partial).__name__}.")
    targets = list(target) if isinstance(target, list) else [target]
    if not targets or any(t is None for t in targets):
        raise ValueError("target: visualize needs a unit ('layer:unit', cl.channel, cl.neuron, cl.direction), a "
                         "class (index, name, cl.logit, cl.prob) or an objective; None (the predicted class) has "
                         "no image to predict on.")
    with look(model) as s:
        canvas = _size(size, s)
        model_size = tuple(s.spec.input_size or canvas)
        objectives = [objective_for(s, t, model_size) for t in targets]
        n = len(objectives) * starts
        groups = torch.arange(n, device=s.device) // starts
        gen = generator(seed, torch.device("cpu"))
        kind = param or chosen.param
        image = _param(kind, chosen, (n, s.channels or 3, *canvas), gen, s.device)
        transform = _transform(transforms, chosen, min(canvas), gen, model_size)
        combined = _Sum([(1.0, o) for o in objectives])
        diverse: dict[str, torch.Tensor] = {}  # layer → the images whose starts are kept apart there
        if diversity and starts > 1:
            layers = [_target_layer(s, o, model_size) for o in objectives]
            for layer in dict.fromkeys(layers):
                mine = torch.tensor([t for t, name in enumerate(layers) if name == layer], device=s.device)
                diverse[layer] = torch.isin(groups, mine).nonzero()[:, 0]

        def score(ctx: Context) -> torch.Tensor:
            values = torch.stack([o(ctx) for o in objectives]).gather(0, groups[None])[0]
            penalty = torch.zeros_like(values)
            for layer, rows in diverse.items():
                penalty = penalty.index_put((rows,), _gram_similarity(ctx.activations[layer][rows], groups[rows]))
            return values - diversity * penalty

        loop = Loop(combined, score, steps, chosen.optimizer, chosen.lr, chosen.rules, transform, model_size,
                    frozenset(diverse))
        descriptions = [objectives[int(g)].description for g in groups]
        params = {"preset": chosen.name, "strength": strength, "steps": steps, "param": kind, "size": canvas,
                  "starts": starts, "diversity": diversity, "seed": seed}

        def stream(images: torch.Tensor, done: int, history: torch.Tensor) -> None:
            partial(Synthesis(images, history, [[] for _ in range(n)], descriptions, dict(params, steps=done)))

        images, history = optimize(s, image, loop, Steps(steps, progress, cancel),
                                   stream if partial is not None else None)
        predictions, confidence = _judge(s, images, objectives, groups, model_size)
        return Synthesis(images.cpu(), history, predictions, descriptions, params, confidence)


def _judge(s: Session, images: torch.Tensor, objectives: list[Objective], groups: torch.Tensor,
           size: tuple[int, int]) -> tuple[list, torch.Tensor | None]:
    """The model's top predictions on the final images, and its confidence in each class target."""
    if not any(o.needs_logits for o in objectives):
        return [[] for _ in range(len(images))], None
    with torch.no_grad():
        x = images if tuple(images.shape[-2:]) == size else torch.nn.functional.interpolate(
            images, size=size, mode="bilinear", align_corners=False)
        logits = s.logits(x)
    confidence = None
    if all(isinstance(o, Logit) and isinstance(o.index, int) for o in objectives):
        classes = torch.tensor([objectives[int(g)].index for g in groups], device=logits.device)
        confidence = class_probabilities(logits.float()).gather(1, classes[:, None])[:, 0].cpu()
    return s.predictions(logits), confidence
