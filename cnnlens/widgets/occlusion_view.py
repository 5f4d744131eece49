"""Occlusion view: Zeiler & Fergus' three maps side by side, streamed coarse to fine."""

from __future__ import annotations

from typing import Any

import ipywidgets as W
import torch

from ..core.session import look
from ..explain.occlusion import MASK_VALUES, interactive_defaults, occlusion
from ..explain.position_grid import grid_ssim
from .base import Images, View, class_names, spatial_layers
from .panel import Panel


def forward_seconds(model: torch.nn.Module, image: torch.Tensor) -> float:
    """About how long one forward of ``image`` takes: the layer-table probe's time (no extra forward; the
    probe tracks receptive fields too, so it errs on the slow, safe side)."""
    with look(model) as session:
        return session.probe_seconds(tuple(session.prepare(image).x.shape[-2:]))


PREVIEW_QUALITY = 0.9  # the SSIM the live preview asks of its approximate map


class OcclusionView(View):
    """Mask size, stride, mask value, target, layer and unit → probability, feature-map and label maps.

    The default mask is a quarter of the image side and the default stride keeps the first job within
    about 9 s of forwards (timed by the layer-table probe). Maps come from incremental inference where the
    model allows it; a quick approximate preview comes first when it saves time (see ``job`` in refresh).

    The feature-map panel follows one unit of ``layer``; unit -1 (the default) picks the map with the
    largest total activation on the clean image, as Zeiler & Fergus do.
    """

    def __init__(self, model: torch.nn.Module, images: Any, index: W.IntSlider | None = None):
        images = images if isinstance(images, Images) else Images(images, model)
        first = images[0][0]
        side = min(first.shape[-2:])
        mask, stride = interactive_defaults(tuple(first.shape[-2:]), forward_seconds(model, first))
        style = {"description_width": "initial"}
        self.mask_size = W.IntSlider(value=mask, min=1, max=side, description="mask size",
                                     continuous_update=False, style=style)
        self.stride = W.IntSlider(value=stride, min=1, max=max(side // 2, stride), description="stride",
                                  continuous_update=False, style=style)
        self.mask_value = W.Dropdown(options=list(MASK_VALUES), value="gray", description="mask value")
        self.target = W.Dropdown(options=[("—", 0)], description="target")
        self.table = {info.name: info for info in spatial_layers(model, images)}
        layers = list(self.table)
        self.layer = W.Dropdown(options=layers, value=layers[-1], description="layer")
        self.unit = W.IntSlider(value=-1, min=-1, max=self.table[layers[-1]].channels - 1, description="unit",
                                continuous_update=False, tooltip="feature map of the layer; -1: the strongest one")
        self.prob_panel = Panel("heatmap", "target probability", cmap="magma")
        self.unit_panel = Panel("heatmap", "feature-map activation", cmap="viridis", opacity=0.85)
        self.label_panel = Panel("labels", "most probable label")
        super().__init__(model, images, [self.prob_panel, self.unit_panel, self.label_panel],
                         [self.mask_size, self.stride, self.mask_value, self.target, self.layer, self.unit], index)
        for widget in (self.mask_size, self.stride, self.mask_value, self.target, self.unit):
            self.watch(widget, self._changed)
        self.watch(self.layer, lambda _: self._layer_changed())
        self.image_changed()

    def _changed(self, change: dict) -> None:
        if not self.quiet(change):
            self.refresh(keep_target=change["new"] if change["owner"] is self.target else None)

    def _layer_changed(self) -> None:
        with self.hushed(self.unit):
            self.unit.value = -1  # the strongest feature map of the new layer
            self.unit.max = self.table[self.layer.value].channels - 1
        self.refresh()

    def refresh(self, keep_target: int | None = None) -> None:
        self._check_open()
        params = {"mask_size": self.mask_size.value, "stride": self.stride.value, "mask_value": self.mask_value.value,
                  "layer": self.layer.value, "unit": None if self.unit.value < 0 else self.unit.value}
        model = self.model

        def job(target, image, progress, cancel, partial):
            """Coarse maps, then a preview at the final stride (a drill-down whose share is calibrated so that the
            map is expected to reach SSIM 0.9 against the exact one), then the exact map. Where no share is good
            enough, the preview is the exact map and the job ends there."""
            preview = occlusion(model, image, target, **params, quality=PREVIEW_QUALITY, progress=progress,
                                cancel=cancel, partial=lambda result: partial((image, result)))
            if preview.params["refine"] is None:
                return image, preview
            partial((image, preview))
            exact = occlusion(model, image, target, **params, progress=progress, cancel=cancel)
            exact.params["preview_ssim"] = grid_ssim(preview.raw.numpy(), exact.raw.numpy())  # what it reached
            return image, exact

        def draw(target, outcome):
            image, result = outcome
            names = class_names(model, len(self.target.options))
            approximate = result.params.get("refine") is not None
            note = f" · preview (SSIM ≈ {result.params['ssim']:.2f})" if approximate else ""
            if "preview_ssim" in result.params:
                note = f" · exact (the approximate map reached SSIM {result.params['preview_ssim']:.2f})"
            self.prob_panel.show(image, result.map, title=f"P({names[target]}) with the mask here{note}")
            which = "strongest map" if params["unit"] is None else "map"
            self.unit_panel.show(image, result.unit_map,
                                 title=f"activation of {which} {result.params['unit_layer']}:{int(result.unit)}")
            self.label_panel.show_labels(result.label_map, names, title="most probable label")

        self.submit_targeted(self.target, job, draw, keep_target)
