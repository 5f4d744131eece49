"""Attribution view: any registered method on one image, overlaid; or several side by side."""

from __future__ import annotations

from typing import Any

import ipywidgets as W
import torch

from ..explain.registry import METHODS, MethodInfo
from .base import Images, View, spatial_layers
from .controls import control_widget, display_controls, link_display
from .panel import Panel

MAX_COMPARE = 4


def run_method(info: MethodInfo, model: torch.nn.Module, image: torch.Tensor, target: int, layer: str | None,
               options: dict[str, Any], progress, cancel, partial=None):
    """Call a registry method with the view's options, streaming partial results to ``partial``.

    Occlusion shows a coarse-stride map first; LIME shows its surrogate refitted after every batch of samples.
    """
    kwargs = dict(options)
    if info.has_layer:
        kwargs["layer"] = layer
    if info.long_running:
        kwargs.update(progress=progress, cancel=cancel)
    if info.name in ("lime", "smoothgrad"):
        kwargs.setdefault("seed", 0)
    if partial is not None and info.name == "occlusion":
        coarse = dict(kwargs, stride=max(kwargs.get("stride", 4) * 2, kwargs.get("mask_size", 16) // 2))
        if coarse["stride"] > kwargs.get("stride", 4):
            partial(info.function(model, image, target, **coarse))
    if partial is not None and info.name == "lime":
        kwargs["partial"] = partial
    return info.function(model, image, target, **kwargs)


class AttributionView(View):
    """Method, target class, layer and the method's own controls → heatmap over the image."""

    def __init__(self, model: torch.nn.Module, images: Any, index: W.IntSlider | None = None):
        images = images if isinstance(images, Images) else Images(images, model)
        self.layers = [info.name for info in spatial_layers(model, images)]
        self.method = W.Dropdown(options=[(m.label, m.name) for m in METHODS.values()], value="gradcam",
                                 description="method")
        self.target = W.Dropdown(options=[("—", 0)], description="target")
        self.layer = W.Dropdown(options=self.layers, value=self.layers[-1], description="layer")
        self.method_box = W.HBox([])
        self.display = display_controls()
        self.compare = W.SelectMultiple(options=[(m.label, m.name) for m in METHODS.values()],
                                        description="compare", rows=4)
        self.panel = Panel("heatmap", "attribution")
        self.compare_panels = [Panel("heatmap", "") for _ in range(MAX_COMPARE)]
        for panel in [self.panel, *self.compare_panels]:
            link_display(self.display, panel)
        for panel in self.compare_panels:
            panel.layout.display = "none"
        self._quiet = False
        self.method_controls: dict[str, W.Widget] = {}
        super().__init__(model, images, [self.panel, *self.compare_panels],
                         [self.method, self.target, self.layer, self.method_box, *self.display, self.compare], index)
        self.method.observe(lambda _: self._method_changed(), "value")
        for widget in (self.target, self.layer, self.compare):
            widget.observe(lambda _: self._changed(), "value")
        self._method_changed(refresh=False)
        self.image_changed()

    # --- control plumbing ---------------------------------------------------------------------

    def _changed(self) -> None:
        if not self._quiet:
            self.refresh()

    def _method_changed(self, refresh: bool = True) -> None:
        info = METHODS[self.method.value]
        self.method_controls = {c.name: control_widget(c) for c in info.controls}
        for widget in self.method_controls.values():
            widget.observe(lambda _: self._changed(), "value")
        self.method_box.children = list(self.method_controls.values())
        self.layer.layout.display = None if info.has_layer else "none"
        self._quiet = True
        self.display[2].value = info.signed
        self.display[0].value = "RdBu_r" if info.signed else "magma"
        self._quiet = False
        if refresh:
            self.refresh()

    def image_changed(self) -> None:
        self.retarget(self.target)
        self.refresh()

    def refresh(self) -> None:
        image, _ = self.image
        target, layer = self.target.value, self.layer.value
        options = {name: w.value for name, w in self.method_controls.items()}
        chosen = METHODS[self.method.value]
        compared = [METHODS[n] for n in self.compare.value][:MAX_COMPARE]
        if compared:  # signed maps (IG, LIME, input×gradient) need the signed display to show their negative part
            self._quiet = True
            self.display[2].value = any(info.signed for info in compared)
            self._quiet = False
        title = f"{chosen.label} · {self.target.label}"

        def compute(progress, cancel, partial):
            def publish_partial(result):
                partial(("single", result))
            if not compared:
                return "single", run_method(chosen, self.model, image, target, layer, options, progress, cancel,
                                            publish_partial)
            results = []
            for info in compared:
                defaults = {c.name: c.default for c in info.controls}
                try:
                    outcome = run_method(info, self.model, image, target, layer, defaults, progress, cancel)
                except (ValueError, TypeError) as error:  # one method that cannot run here must not blank the rest
                    outcome = f"{type(error).__name__}: {error}"
                results.append((info, outcome))
            return "compare", results

        def publish(outcome):
            mode, value = outcome
            if mode == "single":
                self.panel.layout.display = None
                self.panel.show(image, value.map, title=title, vmax=0.0)
                for panel in self.compare_panels:
                    panel.layout.display = "none"
                return
            self.panel.layout.display = "none"  # the compared methods replace the single result
            # methods have different units: each map is divided by its largest |value|, then all share one scale
            for panel, (info, result) in zip(self.compare_panels, value):
                panel.layout.display = None
                if isinstance(result, str):
                    panel.title = info.label
                    panel.fail(result)
                    continue
                peak = float(result.map.abs().max()) or 1.0
                panel.show(image, result.map / peak, title=f"{info.label} (÷ {peak:.3g})", vmax=1.0)
            for panel in self.compare_panels[len(value):]:
                panel.layout.display = "none"

        self.runner.submit(compute, publish)
