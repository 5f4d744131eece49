"""DeconvNet view: a unit's strongest activation projected to pixels, beside its receptive-field patch."""

from __future__ import annotations

from typing import Any

import ipywidgets as W
import torch

from ..explain.deconvnet import deconvnet
from .base import Images, View, spatial_layers
from .panel import Panel


def projection_image(raw: torch.Tensor) -> torch.Tensor:
    """A C×H×W projection scaled to [0, 1] around gray, as Zeiler & Fergus display them."""
    peak = float(raw.abs().max()) or 1.0
    return (0.5 + 0.5 * raw / peak).clamp(0, 1)


class DeconvView(View):
    """Layer and unit (channel) → the DeconvNet projection and the image patch the unit sees."""

    def __init__(self, model: torch.nn.Module, images: Any, index: W.IntSlider | None = None):
        images = images if isinstance(images, Images) else Images(images, model)
        self.table = {info.name: info for info in spatial_layers(model, images)}
        names = list(self.table)
        self.layer = W.Dropdown(options=names, value=names[-1], description="layer")
        self.unit = W.IntSlider(value=0, min=0, max=self.table[names[-1]].channels - 1, description="unit",
                                continuous_update=False)
        self.mode = W.Dropdown(options=[("strongest activation", "max"), ("whole feature map", "map")],
                               value="max", description="project")
        self.input_panel = Panel("image", "input and receptive field")
        self.projection = Panel("image", "DeconvNet projection")
        self.patch = Panel("image", "patch in the receptive field", size=160)
        super().__init__(model, images, [self.input_panel, self.projection, self.patch],
                         [self.layer, self.unit, self.mode], index)
        self.watch(self.layer, lambda change: None if self.quiet(change) else self._layer_changed())
        for widget in (self.unit, self.mode):
            self.watch(widget, lambda change: None if self.quiet(change) else self.refresh())
        self.refresh()

    def _layer_changed(self) -> None:
        with self.hushed(self.unit):
            self.unit.max = self.table[self.layer.value].channels - 1
        self.refresh()

    def refresh(self) -> None:
        image, _ = self.image
        model = self.model
        target = f"{self.layer.value}:{self.unit.value}"
        mode = self.mode.value

        def compute(progress, cancel, partial):
            return deconvnet(model, image, target, mode=mode)

        def publish(result):
            rect = result.patch.tolist() if "patch" in result.extras else None
            self.input_panel.show(image, rect=rect, title=f"input · unit {target}")
            self.projection.show(projection_image(result.raw), title=f"projection of {target} ({mode})")
            self.patch.layout.display = None if rect else "none"  # a whole map has no single patch
            if rect:
                y0, y1, x0, x1 = rect
                self.patch.show(image[:, y0:y1, x0:x1], title=f"receptive field {y1 - y0}×{x1 - x0} px")

        self.runner.submit(compute, publish)
