"""Deep Dream (Mordvintsev, Olah & Tyka 2015): gradient ascent on a real image, octave by octave.

Google's recipe, in [0, 1] pixel space:

- each step ascends along the gradient normalized by its mean absolute value,
  ``x += step_size / 255 · g / mean|g|`` (the original adds ``step_size / mean|g| · g``
  to 0–255 pixels, so ``step_size=1.5`` moves a pixel by 1.5/255 on average),
  then clips the image to [0, 1];
- before each step the image is rolled by a random offset in ``[-jitter, jitter]``
  (``torch.roll``, from a private generator) and the gradient rolled back;
- octaves: the image is processed from its smallest version (``octave_scale``
  times smaller per octave) to its full size; the detail the dream added at
  one octave (dreamed − that octave's original) is upsampled and added to the
  next octave's original, so it carries across scales;
- large images: when a side exceeds ``tile`` pixels the gradient is computed
  tile by tile (equal tiles of at most ``tile`` pixels, the grid shifted by a
  random roll at every step so the seams move), so memory stays that of one
  tile's forward and backward.

The target is any objective of the algebra; a layer alone (a name such as
``"stage3"`` or one of the model's modules) means the L2 norm (the mean of
squares) of its activations, :class:`ActivationL2`, which is Google's default.
Images are dreamed at their own resolution, not resized to the model's input
size (a fully convolutional objective needs none).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Real
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.hooks import capture
from ..core.images import to_batch
from ..core.objectives import Context, Logit, Neuron, Objective, _Sum, class_probabilities
from ..core.progress import CancelToken, ProgressFn, Steps
from ..core.results import Synthesis
from ..core.session import Session, look, redone_when_weights_move, warn_if_out_of_range
from ..core.shadow import named_modules
from ..explain._common import generator, objective_for, positive_int

MIN_OCTAVE_SIDE = 16  # octaves whose short side would be smaller are left out
PARTIAL_EVERY = 5  # steps between partial results within an octave


class ActivationL2(Objective):
    """Mean of the squared activations of ``layer`` per image: Deep Dream's default objective."""

    needs_logits = False

    def __init__(self, layer: str):
        self.layer = layer
        self.layers = frozenset({layer})
        self.description = f"l2({layer})"

    def evaluate(self, ctx: Context) -> torch.Tensor:
        a = ctx.activations[self.layer]
        return a.pow(2) if a.dim() == 1 else a.pow(2).flatten(1).mean(1)


def dream_objective(session: Session, target: Any, size: tuple[int, int]) -> Objective:
    """``target`` as an objective: a layer (name or module, None = the last spatial layer) means its L2 norm."""
    if target is None or isinstance(target, nn.Module):
        return ActivationL2(session.layer(target, size, spatial=target is None, argument="target").name)
    if isinstance(target, str) and ":" not in target and target:
        if session.is_shadow and target in named_modules(session.net):
            return ActivationL2(target)
        if session.spec.classes is None or target not in session.spec.classes:
            if not session.is_shadow:
                session.layer(target, size, spatial=False, argument="target")  # the TorchScript error
            session.check_layer_name(target, argument="target")  # a ValueError listing the layers
    return objective_for(session, target, size)


def _number(value: Any, argument: str, low: float, *, strict: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{argument} must be a number, got {type(value).__name__}.")
    if not math.isfinite(value) or (value <= low if strict else value < low):
        raise ValueError(f"{argument} must be {'>' if strict else '≥'} {low:g}, got {value!r}.")
    return float(value)


def octave_sizes(size: tuple[int, int], octaves: int, scale: float) -> list[tuple[int, int]]:
    """The sizes of the octaves, smallest first, ending with ``size``; too small ones left out."""
    h, w = size
    sizes = []
    for k in range(octaves - 1, -1, -1):
        s = (max(round(h / scale**k), 1), max(round(w / scale**k), 1))
        if k == 0 or min(s) >= MIN_OCTAVE_SIDE:
            sizes.append(s)
    return sizes


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    wide = x.float()  # (antialiased resizing has no half-precision kernel on the CPU)
    return F.interpolate(wide, size=size, mode="bilinear", align_corners=False, antialias=shrink).to(x.dtype)


def _splits(length: int, tile: int) -> list[tuple[int, int]]:
    """``length`` cut into equal pieces of at most ``tile`` (start, stop)."""
    n = -(-length // tile)
    edges = [round(i * length / n) for i in range(n + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _gradient(session: Session, x: torch.Tensor, objective: Objective, tile: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """d objective / d x (tile by tile when ``x`` exceeds ``tile`` on a side), and the objective per image
    (tiles weighted by their area)."""
    h, w = x.shape[-2:]
    grad = torch.zeros_like(x)
    value = torch.zeros(len(x), device=x.device, dtype=torch.float32)
    for y0, y1 in _splits(h, tile):
        for x0, x1 in _splits(w, tile):
            piece = x[..., y0:y1, x0:x1].detach().requires_grad_(True)
            with torch.enable_grad(), capture(session.net, objective.layers) as cap:
                logits = session.run(piece, objective, cap)
                score = objective(Context(piece, cap.activations, logits))
                (g,) = torch.autograd.grad(score.sum(), piece)
            weight = (y1 - y0) * (x1 - x0) / (h * w)
            grad[..., y0:y1, x0:x1] = g * weight
            value += score.detach().float() * weight
    return grad, value


@redone_when_weights_move
def deepdream(model: nn.Module, image: Any, target: Any = None, *, octaves: int = 4, octave_scale: float = 1.4,
              steps: int = 10, step_size: float = 1.5, jitter: int = 32, seed: int | None = None, tile: int = 512,
              progress: ProgressFn | None = None, cancel: CancelToken | None = None,
              partial: Callable[[Synthesis], None] | None = None) -> Synthesis:
    """Dream ``target`` into ``image`` (one image or a batch, any form the explanation methods take).

    ``target``: a layer name or module (its activations' L2 norm; None = the last spatial layer), or any
    target of the algebra (``"layer:unit"``, ``cl.channel``, a class...). ``octaves`` scales from
    ``octave_scale**-(octaves-1)`` of the size to the full size, ``steps`` steps each of mean size
    ``step_size / 255``; ``jitter`` the largest roll in pixels; ``tile`` the largest side computed in one
    piece. Returns a :class:`Synthesis` with the dreamed images (their own size, in [0, 1]), the objective
    per step (octaves·steps × N, measured on the rolled image before the step, at that octave's size) and,
    for class targets, the model's predictions on them and its confidence in the class.
    ``partial`` receives a Synthesis every few steps and after each octave (images at full size).
    """
    octaves = positive_int(octaves, "octaves")
    steps = positive_int(steps, "steps")
    octave_scale = _number(octave_scale, "octave_scale", 1.0, strict=False)
    step_size = _number(step_size, "step_size", 0.0)
    jitter = positive_int(jitter, "jitter", minimum=0)
    tile = positive_int(tile, "tile", minimum=MIN_OCTAVE_SIDE)
    if partial is not None and not callable(partial):
        raise TypeError(f"partial must be a callable or None, got {type(partial).__name__}.")
    with look(model) as s:
        batch = to_batch(image, channels=s.channels, size=None, device=s.device, dtype=s.dtype, argument="image")
        warn_if_out_of_range(batch.x, s.spec.mean is not None)
        original = batch.x.clamp(0, 1)
        full = tuple(original.shape[-2:])
        model_size = tuple(s.spec.input_size or full)
        objective = dream_objective(s, target, model_size)
        terms = [t for _, t in objective.terms] if isinstance(objective, _Sum) else [objective]
        placed = [t for t in terms if isinstance(t, Neuron) and (t.y is not None or t.x is not None)]
        if placed:
            raise ValueError(f"target: {placed[0].description} sits at one position of one grid, but Deep Dream "
                             "runs its layer at every octave's size (and in tiles); dream a unit at the centre "
                             f"(cl.neuron({placed[0].layer!r}, {placed[0].unit})) or a whole channel.")
        gen = generator(seed, torch.device("cpu"))
        sizes = octave_sizes(full, octaves, octave_scale)
        n = len(original)
        counter = Steps(len(sizes) * steps, progress, cancel)
        counter.check()
        params = {"octaves": octaves, "octave_scale": octave_scale, "steps": steps, "step_size": step_size,
                  "jitter": jitter, "seed": seed, "tile": tile, "octave_sizes": sizes}
        descriptions = [objective.description] * n
        history: list[torch.Tensor] = []
        detail = torch.zeros_like(_resize(original, sizes[0]))

        def stream(x: torch.Tensor, base: torch.Tensor, octave: int, step: int) -> None:
            up = (original + _resize(x - base, full)).clamp(0, 1) if x.shape[-2:] != full else x
            partial(Synthesis(up.detach().cpu(), torch.stack(history), [[] for _ in range(n)], descriptions,
                              dict(params, octave=octave + 1, step=step)))

        x = original
        for octave, size in enumerate(sizes):
            base = _resize(original, size)
            x = (base + _resize(detail, size)).clamp(0, 1)
            h, w = size
            tiled = h > tile or w > tile
            for step in range(steps):
                dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=gen))
                if tiled:  # move the tile seams too
                    dy += int(torch.randint(tile, (1,), generator=gen))
                    dx += int(torch.randint(tile, (1,), generator=gen))
                rolled = torch.roll(x, (dy, dx), dims=(-2, -1))
                grad, value = _gradient(s, rolled, objective, tile)
                grad = torch.roll(grad, (-dy, -dx), dims=(-2, -1))
                history.append(value.cpu())
                scale = grad.abs().flatten(1).mean(1).clamp(min=1e-12).view(-1, 1, 1, 1)
                x = (x + step_size / 255 * grad / scale).clamp(0, 1)
                counter.advance(1)
                if partial is not None and (step + 1) % PARTIAL_EVERY == 0 and step + 1 < steps:
                    stream(x, base, octave, step + 1)
            detail = x - base
            if partial is not None and octave + 1 < len(sizes):
                stream(x, base, octave, steps)
        predictions, confidence = _judge(s, x, objective, model_size)
        return Synthesis(x.detach().cpu(), torch.stack(history), predictions, descriptions, params, confidence)


def _judge(s: Session, images: torch.Tensor, objective: Objective, size: tuple[int, int]
           ) -> tuple[list, torch.Tensor | None]:
    """For a class target: the model's top predictions on the dreamed images and its confidence in the class."""
    if not objective.needs_logits:
        return [[] for _ in range(len(images))], None
    with torch.no_grad():
        logits = s.logits(_resize(images, size))
    confidence = None
    if isinstance(objective, Logit) and isinstance(objective.index, int):
        confidence = class_probabilities(logits.float())[:, objective.index].cpu()
    return s.predictions(logits), confidence
