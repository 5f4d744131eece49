"""DeconvNet projections (Zeiler & Fergus 2014).

The paper's use: pick a feature map (or one unit) of any layer, keep only its
activation, and send it back down to pixel space through the network with
rectified backward signals (``core/relu_rules``), max-pool switches (from
autograd) and transposed filters (the convolutions' own backward).

- ``target="layer:unit"`` with ``mode="max"`` (default): only the unit's
  strongest activation is projected, as in the paper's figures; the result
  carries that ``location`` (in the layer's grid) and its receptive-field
  ``patch`` box ``(y0, y1, x0, x1)`` in the coordinates of the returned map,
  i.e. of the image as given even when the model resizes it;
- ``mode="map"``: the whole feature map is projected;
- any other target (class index, Objective): its gradient is projected.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.objectives import Channel, Custom, Objective
from ..core.results import Explanation
from ..core.session import look, redone_when_weights_move
from ._common import explanation, input_gradient, objective_for, output_size

MODES = ("max", "map")


def _seeded(channel: Channel, mode: str, found: dict[str, torch.Tensor]) -> Objective:
    """An objective whose gradient w.r.t. the layer is the chosen activation itself (all else zero)."""

    def project(acts, logits):
        a = channel.select_map(acts)  # B×H×W
        seed = a.detach().clamp(min=0)
        if mode == "max" and a.dim() == 3:
            flat = seed.flatten(1)
            top = flat.argmax(1)
            keep = torch.zeros_like(flat).scatter_(1, top[:, None], 1.0).view_as(seed)
            seed = seed * keep
            found["location"] = torch.stack([top // a.shape[2], top % a.shape[2]], 1).cpu()
            found["activation"] = flat.gather(1, top[:, None])[:, 0].cpu()
        return (a * seed).flatten(1).sum(1)

    return Custom(project, channel.layers, f"{channel.description} ({mode})", needs_logits=False)


def _scaled(box: tuple[int, int, int, int], source: tuple[int, int], target: tuple[int, int]
            ) -> tuple[int, int, int, int]:
    """A ``(y0, y1, x0, x1)`` box in an image of size ``source`` mapped to one of size ``target``."""
    (sh, sw), (th, tw) = source, target
    y0, y1, x0, x1 = box
    return (int(y0 * th // sh), int(-(-y1 * th // sh)), int(x0 * tw // sw), int(-(-x1 * tw // sw)))


@redone_when_weights_move
def deconvnet(model: torch.nn.Module, x: Any, target: Any = None, *, mode: str = "max") -> Explanation:
    """Project ``target`` (a 'layer:unit' feature map, a neuron, or a class) back to pixels."""
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}. Valid modes: {', '.join(MODES)}.")
    with look(model) as s:
        batch = s.prepare(x)
        size = tuple(batch.x.shape[-2:])
        objective = objective_for(s, target, size)
        found: dict[str, torch.Tensor] = {}
        seeded = _seeded(objective, mode, found) if isinstance(objective, Channel) else objective
        grad, logits = input_gradient(s, batch.x, seeded, rule="deconvnet")
        extras: dict[str, Any] = {}
        layer = objective.layer if isinstance(objective, Channel) else None
        if "location" in found:
            info = s.layer(layer, size, spatial=False, argument="target layer")
            extras["location"] = found["location"]
            extras["activation"] = found["activation"]
            extras["patch"] = torch.tensor([_scaled(info.receptive_field(int(y), int(xx), size), size,
                                                    output_size(batch))
                                            for y, xx in found["location"]])
        return explanation(s, batch, grad.abs().amax(1), grad, method="deconvnet", objective=seeded,
                           layer=layer, params={"mode": mode}, logits=logits, extras=extras)
