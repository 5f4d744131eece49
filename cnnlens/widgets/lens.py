"""Lens: every view in one dashboard with a shared image picker; ``demo()`` opens it on the default."""

from __future__ import annotations

from typing import Any

import ipywidgets as W
import torch

from .activations import ActivationsView
from .attribution import AttributionView
from .base import Images, close_widgets, close_with_front_end
from .deconv_view import DeconvView
from .occlusion_view import OcclusionView


class Lens(W.VBox):
    """Tabs for activations, attribution, occlusion and DeconvNet over one image picker."""

    def __init__(self, model: torch.nn.Module, images: Any):
        self.model = model
        self.images = Images(images, model)
        self.index = W.IntSlider(value=0, min=0, max=len(self.images) - 1, description="image",
                                 continuous_update=False)
        self.views = {
            "Activations": ActivationsView(model, self.images, self.index),
            "Attribution": AttributionView(model, self.images, self.index),
            "Occlusion": OcclusionView(model, self.images, self.index),
            "DeconvNet": DeconvView(model, self.images, self.index),
        }
        self.tabs = W.Tab(children=list(self.views.values()))
        for i, title in enumerate(self.views):
            self.tabs.set_title(i, title)
        super().__init__([self.index, self.tabs])
        close_with_front_end(self)

    def close(self) -> None:
        """Close every view (their worker threads, jobs and widgets), the image picker and the tabs; drop the model."""
        for view in self.__dict__.get("views", {}).values():
            view.close()
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
