"""Activations view: every feature map of a layer, first-layer filters, and the top-5 predictions."""

from __future__ import annotations

from typing import Any

import ipywidgets as W
import torch
import torch.nn.functional as F

from ..core.hooks import capture
from ..core.objectives import class_probabilities
from ..core.session import look
from .base import Images, View, class_names, spatial_layers
from .panel import Panel

MAX_GRID_VALUES = 2_000_000  # floats sent for one grid; larger layers are pooled down per tile


def first_conv_filters(model: torch.nn.Module) -> torch.Tensor | None:
    """The first convolution's filters as N×3×k×k RGB tiles (None if it does not see 3 channels)."""
    conv = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if conv is None or conv.in_channels != 3 or conv.groups != 1:
        return None
    return conv.weight.detach().float().cpu()


def layer_maps(model: torch.nn.Module, image: torch.Tensor, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(C×h×w activations of ``layer`` — pooled if huge —, logits) for one image."""
    with look(model) as s, torch.no_grad(), capture(s.net, [layer]) as cap:
        logits = s.logits(image[None])
        acts = cap[layer][0].float().cpu()
    c, h, w = acts.shape
    if c * h * w > MAX_GRID_VALUES:
        side = max(int((MAX_GRID_VALUES / c) ** 0.5), 1)
        acts = F.adaptive_avg_pool2d(acts[None], (min(h, side), min(w, side)))[0]
    return acts, logits[0].cpu()


class ActivationsView(View):
    """Pick an image and a layer: all its feature maps (click one to zoom), filters, predictions."""

    def __init__(self, model: torch.nn.Module, images: Any, index: W.IntSlider | None = None):
        images = images if isinstance(images, Images) else Images(images, model)
        self.table = spatial_layers(model, images)
        first = next((i for i in self.table if i.kind in ("ReLU", "Conv2d")), self.table[0])
        self.layer = W.Dropdown(options=[i.name for i in self.table], value=first.name, description="layer")
        self.input_panel = Panel("image", "input")
        self.grid = Panel("grid", "feature maps", size=384, cmap="viridis")
        self.filters = Panel("grid", "first-layer filters", size=192)
        self.predictions = Panel("bars", "top-5 predictions")
        super().__init__(model, images, [self.input_panel, self.grid, self.filters, self.predictions],
                         [self.layer], index)
        self.watch(self.layer, lambda _: self.refresh())
        filters = first_conv_filters(model)
        if filters is not None:
            self.filters.show_grid(filters, title=f"first-layer filters ({len(filters)})")
        else:
            self.filters.layout.display = "none"
        self.refresh()

    def select(self, layer: str, unit: int) -> bool:
        """Show ``layer`` with map ``unit`` selected (from a linked view); the selection reaches no other view.

        Returns False when this view has no such layer.
        """
        if self.closed or layer not in [info.name for info in self.table]:
            return False
        with self.hushed(self.grid):
            if self.layer.value != layer:
                self.layer.value = layer  # recomputes the grid
            self.grid.selected = unit
        return True

    def refresh(self) -> None:
        image, _ = self.image
        layer, model = self.layer.value, self.model

        def compute(progress, cancel, partial):
            return layer_maps(model, image, layer)

        def publish(result):
            acts, logits = result
            probs = class_probabilities(logits, 0)
            top = probs.topk(min(5, len(probs)))
            names = class_names(model, len(probs))
            bars = [(names[int(i)], float(p)) for p, i in zip(top.values, top.indices)]
            self.input_panel.show(image, title="input")
            self.grid.show_grid(acts, title=f"{layer}: {acts.shape[0]} feature maps")
            self.predictions.show_bars(bars, title="top-5 predictions")

        self.runner.submit(compute, publish)
