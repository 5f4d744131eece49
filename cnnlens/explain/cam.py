"""Class Activation Mapping (Zhou et al. 2016).

For a network that ends in global average pooling and one linear layer, the
class score is the average over positions of Σ_k w_ck A_k(y, x); CAM draws
that sum before averaging. The head is verified numerically on the actual
input: a model whose head is not GAP + linear gets a clear error that points
to Grad-CAM, which works on any head.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.hooks import capture
from ..core.objectives import Logit, Prob
from ..core.results import Explanation
from ..core.session import look, redone_when_weights_move
from ._common import explanation, objective_for


@redone_when_weights_move
def cam(model: torch.nn.Module, x: Any, target: Any = None, *, layer: str | torch.nn.Module | None = None
        ) -> Explanation:
    """CAM of class ``target`` (None = predicted) at ``layer`` (None = last spatial layer)."""
    with look(model) as s:
        batch = s.prepare(x)
        size = tuple(batch.x.shape[-2:])
        info = s.layer(layer, size, spatial=True)
        objective = objective_for(s, target, size)
        with torch.no_grad(), capture(s.net, [info.name]) as cap:
            logits = s.logits(batch.x)
            acts = cap[info.name].clone()
        objective = objective.bind(logits)
        if not isinstance(objective, Logit) or isinstance(objective, Prob):
            raise ValueError("target: CAM explains class logits (an int class or None); "
                             f"got {objective.description!r}. "
                             "Use cnnlens.gradcam for other targets.")
        fc = _linear_head(s, size, logits.shape[1])
        if fc is None or fc.in_features != acts.shape[1] or not torch.allclose(
                F.linear(acts.mean((2, 3)), fc.weight, fc.bias), logits,
                rtol=1e-3, atol=1e-3 * float(logits.abs().max()) + 1e-5):
            raise ValueError(f"CAM needs a head of global average pooling + one linear layer on layer {info.name!r}, "
                             "and this model's head is different (a check of logits = linear(mean of the layer) "
                             "failed). Use cnnlens.gradcam(model, x, target, layer=...) instead, which works "
                             "on any head.")
        objective.check(logits.shape[1])
        classes = objective.classes(len(logits), logits.device)
        raw = torch.einsum("bk,bkhw->bhw", fc.weight[classes].to(acts), acts)
        return explanation(s, batch, raw, raw, method="cam", objective=objective, layer=info.name,
                           params={}, logits=logits)


def _linear_head(session, size: tuple[int, int], classes: int) -> nn.Linear | None:
    """The last linear layer that outputs the class scores, if any."""
    for info in reversed(session.layers(size)):
        module = session.module(info.name)
        if isinstance(module, nn.Linear) and module.out_features == classes:
            return module
    return None
