"""Guided backpropagation (Springenberg et al. 2015).

Gradient of the target with every ReLU passing only positive gradient where
its input was positive (the rule lives in ``core/relu_rules``; no module is
swapped). The map is the largest absolute value over colour channels.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.results import Explanation
from ..core.session import look, redone_when_weights_move
from ._common import explanation, input_gradient, objective_for


@redone_when_weights_move
def guided_backprop(model: torch.nn.Module, x: Any, target: Any = None) -> Explanation:
    """Guided-backprop gradient of ``target`` w.r.t. ``x``; ``raw`` is C×H×W, ``map`` its max |·| over channels."""
    with look(model) as s:
        batch = s.prepare(x)
        objective = objective_for(s, target, tuple(batch.x.shape[-2:]))
        grad, logits = input_gradient(s, batch.x, objective, rule="guided")
        return explanation(s, batch, grad.abs().amax(1), grad, method="guided_backprop", objective=objective,
                           layer=None, params={}, logits=logits)
