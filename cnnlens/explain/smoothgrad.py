"""SmoothGrad (Smilkov et al. 2017): saliency averaged over noisy copies of the image.

Gaussian noise with standard deviation ``noise`` × (max − min of the image)
is added ``samples`` times; the gradients (absolute by default, as in the
paper's figures) are averaged. Noise comes from a private generator, so the
global RNG is never touched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..core.progress import CancelToken, ProgressFn, Steps
from ..core.results import Explanation
from ..core.session import look, redone_when_weights_move
from ._common import boolean, clean_logits, explanation, generator, objective_for, positive_int, summed_gradients


@redone_when_weights_move
def smoothgrad(model: torch.nn.Module, x: Any, target: Any = None, *, samples: int = 25, noise: float = 0.15,
               absolute: bool = True, batch_size: int | None = None, seed: int | None = None,
               progress: ProgressFn | None = None, cancel: CancelToken | None = None,
               partial: Callable[[Explanation], None] | None = None) -> Explanation:
    """Mean of |d target / d x| (or signed, ``absolute=False``) over ``samples`` noisy copies of ``x``.

    ``partial`` is called after every chunk of ``batch_size`` images but the last with the mean over the
    samples drawn so far (the final result is the same as without it). ``batch_size`` defaults to 64, fewer
    on the CPU where activations are large (:meth:`Session.batch_in_heap`).
    """
    samples = positive_int(samples, "samples")
    absolute = boolean(absolute, "absolute")
    batch_size = None if batch_size is None else positive_int(batch_size, "batch_size")
    if not isinstance(noise, (int, float)) or noise < 0:
        raise ValueError(f"noise must be a number ≥ 0 (a fraction of the image's value range), got {noise!r}.")
    steps = Steps(samples, progress, cancel)
    with look(model) as s:
        batch = s.prepare(x)
        objective = objective_for(s, target, tuple(batch.x.shape[-2:]))
        batch_size = s.images_per_forward(batch_size, tuple(batch.x.shape[-2:]))
        logits = clean_logits(s, batch.x, objective)
        objective = objective.bind(logits)
        gen = generator(seed, batch.x.device)
        span = (batch.x.flatten(1).amax(1) - batch.x.flatten(1).amin(1)).view(-1, 1, 1, 1)
        eps = torch.randn((samples, *batch.x.shape), generator=gen, device=batch.x.device, dtype=batch.x.dtype)
        points = batch.x[None] + eps * (noise * span)[None]
        weights = torch.full((samples,), 1.0 / samples)
        params = {"samples": samples, "noise": noise, "absolute": absolute, "seed": seed}

        def result(raw: torch.Tensor, drawn: int) -> Explanation:
            return explanation(s, batch, raw.abs().amax(1), raw, method="smoothgrad", objective=objective,
                               layer=None, params=dict(params, samples=drawn), logits=logits)

        def stream(total: torch.Tensor, drawn: int) -> None:
            partial(result(total * (samples / drawn), drawn))

        raw = summed_gradients(s, points, objective, weights, batch_size, steps, torch.abs if absolute else None,
                               after_chunk=stream if partial is not None else None)
        return result(raw, samples)

