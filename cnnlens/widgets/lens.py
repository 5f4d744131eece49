"""Lens: every view in one dashboard with a shared image picker; ``demo()`` opens it on the default."""

from __future__ import annotations

from typing import Any

import ipywidgets as W
import torch

from .activations import ActivationsView
from .attribution import AttributionView
from .base import Images, close_widgets, close_with_front_end
from .classes_view import ClassesView
from .deconv_view import DeconvView
from .dream_view import DreamView
from .embed_view import EmbeddingView
from .features_view import FeaturesView
from .health_view import FilterHealthView
from .inversion_view import InversionView
from .occlusion_view import OcclusionView
from .scan_views import ClassImagesView, SharedScan, TopImagesView

DATASET = {"Top images": TopImagesView, "Class images": ClassImagesView, "Embedding": EmbeddingView}
SYNTHESIS = {"Features": FeaturesView, "Classes": ClassesView, "Deep Dream": DreamView, "Inversion": InversionView}
LAZY = {"Filters": FilterHealthView}  # built the first time its tab opens
DEFERRED = {**DATASET, **LAZY, **SYNTHESIS}  # the tabs that take options and compute only while open


class Lens(W.VBox):
    """Tabs for activations, attribution, occlusion, DeconvNet; the dataset views (top images, class images,
    embedding, filters); and the synthesis views (features, classes, Deep Dream, inversion), over one image
    picker.

    The dataset and synthesis tabs compute only while open; Top images and Class images share one scan of the
    images, run the first time either opens. Units are linked: clicking a feature map in Activations or
    choosing a layer/unit in DeconvNet, Top images or Features selects it in the others; clicking an image in
    Top images, Class images or Embedding makes it the current image. ``options`` gives keyword arguments per
    deferred tab, e.g. ``{"Features": {"steps": 64}, "Embedding": {"method": "pca"}}`` for quick looks.
    """

    def __init__(self, model: torch.nn.Module, images: Any, *, options: dict[str, dict] | None = None):
        self.model = model
        self.images = Images(images, model)
        self.index = W.IntSlider(value=0, min=0, max=len(self.images) - 1, description="image",
                                 continuous_update=False)
        options = dict(options or {})
        unknown = sorted(set(options) - set(DEFERRED))
        if unknown:
            raise ValueError(f"options: no tab {unknown[0]!r} takes options. Tabs that take options: "
                             f"{', '.join(DEFERRED)}.")
        self._options = options
        self.scan = SharedScan(model, self.images)
        self.views: dict[str, W.Widget] = {
            "Activations": ActivationsView(model, self.images, self.index),
            "Attribution": AttributionView(model, self.images, self.index),
            "Occlusion": OcclusionView(model, self.images, self.index),
            "DeconvNet": DeconvView(model, self.images, self.index),
        }
        for title, view_class in DATASET.items():
            shared = {"scan": self.scan} if view_class is not EmbeddingView else {}
            self.views[title] = view_class(model, self.images, self.index, **shared, **options.get(title, {}),
                                           active=False)
        self._placeholders = {title: W.HTML("<i>opens when you choose this tab</i>") for title in LAZY}
        for title, view_class in SYNTHESIS.items():
            self.views[title] = view_class(model, self.images, self.index, **options.get(title, {}), active=False)
        self.titles = [*list(self.views)[:4], *DATASET, *LAZY, *SYNTHESIS]
        self.tabs = W.Tab(children=[self.views.get(t) or self._placeholders[t] for t in self.titles])
        self.tabs.add_class("cnnlens-tabs")  # labels at full width (widget.css)
        for i, title in enumerate(self.titles):
            self.tabs.set_title(i, title)
        super().__init__([self.index, self.tabs])
        self._observed: list[tuple[W.Widget, Any, str]] = []
        self._observe(self.tabs, self._tab_opened, "selected_index")
        self._tab_opened({"new": self.tabs.selected_index})
        self._link_units()
        close_with_front_end(self)

    def _observe(self, widget: W.Widget, handler: Any, names: str = "value") -> None:
        widget.observe(handler, names)
        self._observed.append((widget, handler, names))

    def _tab_opened(self, change: dict) -> None:
        """Deferred views compute while their tab is open (catching up on changes made meanwhile); a lazy tab
        builds its view the first time."""
        opened = self.titles[change["new"]] if change["new"] is not None else None
        if opened in self._placeholders:
            self.views[opened] = LAZY[opened](self.model, self.images, self.index, **self._options.get(opened, {}))
            children = list(self.tabs.children)
            children[change["new"]] = self.views[opened]
            self.tabs.children = children
            self._placeholders.pop(opened).close()
        for title, view in self.views.items():
            if hasattr(view, "activate"):
                view.activate() if title == opened else view.deactivate()

    def _link_units(self) -> None:
        """A unit chosen in one of Activations (click a map), DeconvNet, Top images or Features is selected in the
        others.

        Each view's ``select`` sets its controls inside ``hushed``, so it triggers no link back (no loops).
        """
        activations, deconv, top, features = (self.views["Activations"], self.views["DeconvNet"],
                                              self.views["Top images"], self.views["Features"])
        linked = (activations, deconv, top, features)

        def chosen(source, layer_unit):
            def handler(change: dict) -> None:
                if source.closed or source.quiet(change):
                    return
                layer, unit = layer_unit()
                if unit < 0:
                    return
                for view in linked:
                    if view is not source:
                        view.select(layer, unit)
            return handler

        self._observe(activations.grid, chosen(activations, lambda: (activations.layer.value,
                                                                     activations.grid.selected)), "selected")
        for view in (deconv, top, features):
            handler = chosen(view, lambda view=view: (view.layer.value, view.unit.value))
            self._observe(view.layer, handler)
            self._observe(view.unit, handler)

    def close(self) -> None:
        """Close every view (their worker threads, jobs and widgets), the image picker and the tabs; drop the model."""
        for widget, handler, names in self.__dict__.get("_observed", []):
            widget.unobserve(handler, names)
        self._observed = []
        for view in self.__dict__.get("views", {}).values():
            view.close()
        if "scan" in self.__dict__:
            self.scan.close()
        for placeholder in self.__dict__.get("_placeholders", {}).values():
            placeholder.close()
        if "tabs" in self.__dict__:
            close_widgets(self.tabs)
            close_widgets(self.index)
            if isinstance(self.layout, W.Widget):
                self.layout.close()
            self.views = {}
            self.model = self.images = None
        super().close()

    def wait(self, timeout: float = 120.0) -> bool:
        """Block until every view has finished computing."""
        return all(view.wait(timeout) for view in self.views.values())


def demo() -> Lens:
    """The Lens on the embedded default model and its held-out images."""
    from .. import zoo

    model, data = zoo.shapes()
    return Lens(model, data)
