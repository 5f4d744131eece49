"""Grad-CAM (Selvaraju et al. 2017) at any spatial layer (default: the last one).

Channel weights are the spatially averaged gradients of the target w.r.t. the
layer's activations; the map is ReLU(Σ_k w_k A_k), upsampled to the input.
The forward builds no autograd graph below the layer and the backward stops
there, so the cost is close to one forward pass.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.hooks import capture
from ..core.objectives import Context
from ..core.results import Explanation
from ..core.session import look, redone_when_weights_move
from ._common import boolean, explanation, objective_for


@redone_when_weights_move
def gradcam(model: torch.nn.Module, x: Any, target: Any = None, *, layer: str | torch.nn.Module | None = None,
            relu: bool = True) -> Explanation:
    """Grad-CAM map of ``target`` at ``layer`` (None = last spatial layer); ``raw`` is the layer-resolution map."""
    relu = boolean(relu, "relu")
    with look(model) as s:
        batch = s.prepare(x)
        size = tuple(batch.x.shape[-2:])
        info = s.layer(layer, size, spatial=True)
        objective = objective_for(s, target, size)
        with capture(s.net, objective.layers, stop_below=info.name) as cap:
            logits = s.run(batch.x, objective, cap, also=(info.name,))
            score = objective(Context(batch.x, cap.activations, logits))
            acts = cap[info.name]
            # a target computed below the layer was recorded without a graph: it cannot depend on the layer
            grad = torch.autograd.grad(score.sum(), acts, allow_unused=True)[0] if score.requires_grad else None
        if grad is None:
            raise ValueError(f"target {objective.description!r} does not depend on layer {info.name!r} "
                             "(its layer lies below it); pick a higher target or a lower layer.")
        weights = grad.mean((2, 3), keepdim=True)
        raw = (weights * acts.detach()).sum(1)
        if relu:
            raw = raw.clamp(min=0)
        return explanation(s, batch, raw, raw, method="gradcam", objective=objective, layer=info.name,
                           params={"relu": relu}, logits=None if logits is None else logits.detach())
