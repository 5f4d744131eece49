"""Attribution view: any registered method on one image, overlaid; or several side by side."""

from __future__ import annotations

import traceback
from typing import Any

import ipywidgets as W
import torch

from ..dataset.metrics import importance
from ..explain.registry import METHODS, MethodInfo
from .base import Images, View, close_widgets, spatial_layers
from .controls import control_widget, display_controls, link_display
from .panel import Panel
from .trust_check import CheckAction

MAX_COMPARE = 4


def run_method(info: MethodInfo, model: torch.nn.Module, image: torch.Tensor, target: int, layer: str | None,
               options: dict[str, Any], progress, cancel, partial=None):
    """Call a registry method with the view's options, as its registry entry says (no per-method cases).

    A method that ``streams`` hands its intermediate results to ``partial`` (e.g. LIME's refits).
    """
    kwargs = dict(options)
    if info.has_layer:
        kwargs["layer"] = layer
    if info.long_running:
        kwargs.update(progress=progress, cancel=cancel)
    if info.seeded:
        kwargs.setdefault("seed", 0)
    if info.streams and partial is not None:
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
                                        description="compare", rows=4,
                                        tooltip=f"up to {MAX_COMPARE} methods side by side (ctrl-click)")
        self._compared = False  # the last refresh compared methods (its display was chosen for them)
        self.panel = Panel("heatmap", "attribution")
        self.compare_panels = [Panel("heatmap", "") for _ in range(MAX_COMPARE)]
        self._links = [link for panel in [self.panel, *self.compare_panels]
                       for link in link_display(self.display, panel)]
        for panel in self.compare_panels:
            panel.layout.display = "none"
        self.method_controls: dict[str, W.Widget] = {}
        self.check = CheckAction(self._check_request)
        super().__init__(model, images, [self.panel, *self.compare_panels],
                         [self.method, self.target, self.layer, self.method_box, *self.display, self.compare,
                          self.check.button], index)
        self.children = [*self.children, self.check.box]
        self.watch(self.method, lambda _: self._method_changed())
        for widget in (self.target, self.layer, self.compare):
            self.watch(widget, self._changed)
        self._method_changed(refresh=False)
        self.image_changed()

    def close(self) -> None:
        if not self.closed:
            self.check.close()
        super().close()

    def _check_request(self):
        """What the "check" button checks: the current image, method, target, layer and method options."""
        self._check_open()
        info = METHODS[self.method.value]
        options = {name: w.value for name, w in self.method_controls.items()}
        if info.has_layer:
            options["layer"] = self.layer.value
        index = self.index.value
        target = self.target.value if self._targets_for is not None and self._targets_for[0] == index else None
        return self.model, self.images, index, info, target, options

    # --- control plumbing ---------------------------------------------------------------------

    def _changed(self, change: dict) -> None:
        if not self.quiet(change):
            self.refresh(keep_target=change["new"] if change["owner"] is self.target else None)

    def _method_changed(self, refresh: bool = True) -> None:
        info = METHODS[self.method.value]
        old = list(self.method_controls.values())
        self.method_controls = {c.name: control_widget(c) for c in info.controls}
        for widget in self.method_controls.values():
            self.watch(widget, self._changed)
        self.method_box.children = list(self.method_controls.values())
        self._forget(old)
        self.layer.layout.display = None if info.has_layer else "none"
        self._show_signed(info.signed)
        if refresh:
            self.refresh()

    def _show_signed(self, signed: bool) -> None:
        """The display for signed maps (a diverging colormap centred on 0) or unsigned ones; display controls
        are linked in the browser: no recompute."""
        self.display[2].value = signed
        self.display[0].value = "RdBu_r" if signed else "magma"

    def _forget(self, widgets: list[W.Widget]) -> None:
        """Unobserve and close a method's controls that were replaced."""
        self._watching = [w for w in self._watching if not any(w[0] is old for old in widgets)]
        for widget in widgets:
            widget.unobserve_all()
            close_widgets(widget)

    def refresh(self, keep_target: int | None = None) -> None:
        self._check_open()
        self.check.hide()
        layer = self.layer.value
        options = {name: w.value for name, w in self.method_controls.items()}
        chosen = METHODS[self.method.value]
        compared = [METHODS[n] for n in self.compare.value]
        if len(compared) > MAX_COMPARE:  # one panel per method: the selection itself keeps to the panels
            self.compare.value = self.compare.value[:MAX_COMPARE]  # (observed: refreshes with these)
            return
        if compared:  # signed maps (IG, LIME, input×gradient) need the signed display to show their negative part
            self._show_signed(any(info.signed for info in compared))
        elif self._compared:  # back to one method: its own display
            self._show_signed(chosen.signed)
        self._compared = bool(compared)
        model = self.model

        def job(target, image, progress, cancel, partial):
            if not compared:
                def stream(result):
                    partial(("single", image, result, chosen))

                result = run_method(chosen, model, image, target, layer, options, progress, cancel, stream)
                return "single", image, result, chosen
            results = []
            for info in compared:
                defaults = {c.name: c.default for c in info.controls}
                try:
                    outcome = run_method(info, model, image, target, layer, defaults, progress, cancel)
                except (ValueError, TypeError) as error:  # one method that cannot run here must not blank the rest
                    outcome = (f"{type(error).__name__}: {error}",
                               "".join(traceback.format_exception(type(error), error, error.__traceback__)))
                results.append((info, outcome))
            return "compare", image, results, chosen

        self.submit_targeted(self.target, job, self._draw, keep_target)

    def _draw(self, target: int, outcome) -> None:
        mode, image, value, chosen = outcome
        if mode == "single":
            label = next((text for text, v in self.target.options if v == target), str(target))
            self.panel.layout.display = None
            self.panel.show(image, importance(value), title=f"{chosen.label} · {label}", vmax=0.0)
            for panel in self.compare_panels:
                panel.layout.display = "none"
            return
        self.panel.layout.display = "none"  # the compared methods replace the single result
        # methods have different units: each map is divided by its 99.5% level of |value| (its largest would let
        # one extreme pixel darken the rest), then all share one scale; higher is "matters more" in every one
        for panel, (info, result) in zip(self.compare_panels, value):
            panel.layout.display = None
            if isinstance(result, tuple):
                panel.title = info.label
                panel.fail(*result)
                continue
            shown = importance(result).float()
            peak = float(torch.quantile(shown.abs().flatten(), 0.995)) or float(shown.abs().max()) or 1.0
            panel.show(image, (shown / peak).clamp(-1, 1), title=f"{info.label} (÷ {peak:.3g})", vmax=1.0)
        for panel in self.compare_panels[len(value):]:
            panel.layout.display = "none"
