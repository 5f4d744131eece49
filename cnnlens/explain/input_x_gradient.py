"""Input × gradient (Shrikumar et al. 2016): gradient saliency weighted by the pixel values.

Signed; the map sums over colour channels. One forward + one backward.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.results import Explanation
from ..core.session import look, redone_when_weights_move
from ._common import explanation, input_gradient, objective_for


@redone_when_weights_move
def input_x_gradient(model: torch.nn.Module, x: Any, target: Any = None) -> Explanation:
    """x · d target / d x, summed over channels (signed)."""
    with look(model) as s:
        batch = s.prepare(x)
        objective = objective_for(s, target, tuple(batch.x.shape[-2:]))
        grad, logits = input_gradient(s, batch.x, objective)
        raw = batch.x * grad
        return explanation(s, batch, raw.sum(1), raw, method="input_x_gradient", objective=objective,
                           layer=None, params={}, logits=logits)
