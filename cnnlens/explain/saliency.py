"""Gradient saliency (Simonyan, Vedaldi & Zisserman 2014).

The map is the largest absolute input gradient over colour channels: which
pixels, changed slightly, change the target most. One forward + one backward.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.results import Explanation
from ..core.session import look, redone_when_weights_move
from ._common import explanation, input_gradient, objective_for


@redone_when_weights_move
def saliency(model: torch.nn.Module, x: Any, target: Any = None) -> Explanation:
    """|d target / d x|, max over channels. ``target``: class index, 'layer:unit', Objective or None (top class)."""
    with look(model) as s:
        batch = s.prepare(x)
        objective = objective_for(s, target, tuple(batch.x.shape[-2:]))
        grad, logits = input_gradient(s, batch.x, objective)
        return explanation(s, batch, grad.abs().amax(1), grad, method="saliency", objective=objective,
                           layer=None, params={}, logits=logits)
