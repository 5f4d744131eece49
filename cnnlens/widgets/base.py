"""What every view shares: the model, an image source, a live runner and its panels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ipywidgets as W
import numpy as np
import torch

from ..core.session import look
from .controls import target_options
from .live import LiveRunner
from .panel import Panel


class Images:
    """Images to look at: a dataset of ``(image, label, ...)``, a B×C×H×W tensor, or a list of any images."""

    def __init__(self, source: Any, model: torch.nn.Module):
        self.source = [source] if _one_image(source) else source
        self.model = model
        if not hasattr(self.source, "__len__") or len(self.source) == 0:
            raise ValueError("images must be a non-empty dataset, tensor batch or list of images.")

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int | None]:
        item = self.source[i]
        label = None
        if isinstance(item, tuple):
            item, label = item[0], (int(item[1]) if len(item) > 1 else None)
        with look(self.model) as session:
            return session.prepare(item).x[0].detach(), label


def _one_image(source: Any) -> bool:
    """Whether ``source`` is a single image (not a collection of them)."""
    if isinstance(source, (str, Path)) or type(source).__module__.startswith("PIL."):
        return True
    if isinstance(source, torch.Tensor):
        return source.dim() in (2, 3)
    if isinstance(source, np.ndarray):
        return source.ndim in (2, 3)  # H×W, H×W×C or C×H×W; a batch is 4-d
    return False


class View(W.VBox):
    """A view: controls on top, panels below, recomputed live when a control changes."""

    def __init__(self, model: torch.nn.Module, images: Any, panels: Sequence[Panel], controls: Sequence[W.Widget],
                 index: W.IntSlider | None = None):
        self.model = model
        self.images = images if isinstance(images, Images) else Images(images, model)
        self.index = index or W.IntSlider(value=0, min=0, max=len(self.images) - 1, description="image")
        self.panels = list(panels)
        self.runner = LiveRunner(self.panels)
        self.controls = W.HBox(list(controls), layout=W.Layout(flex_flow="row wrap"))
        self.index.observe(lambda _: self.image_changed(), "value")
        own = [] if index is not None else [self.index]
        super().__init__(own + [self.controls, W.HBox(self.panels, layout=W.Layout(flex_flow="row wrap"))])

    @property
    def image(self) -> tuple[torch.Tensor, int | None]:
        return self.images[self.index.value]

    def refresh(self) -> None:
        """Recompute for the current controls (subclasses submit their job)."""
        raise NotImplementedError

    def image_changed(self) -> None:
        """The image picker moved: recompute (views with a target dropdown refill it first)."""
        self.refresh()

    def retarget(self, target: W.Dropdown) -> list[str]:
        """Fill ``target`` with the classes for the current image, predicted first, without a recompute.

        Returns the class names. The caller's observers see ``self._quiet`` set while the options change.
        """
        image, _ = self.image
        with look(self.model) as session, torch.no_grad():
            logits = session.logits(image[None])[0]
        names = class_names(self.model, len(logits))
        self._quiet = True
        try:
            target.options = target_options(logits, names)
            target.value = int(logits.argmax())
        finally:
            self._quiet = False
        return names

    def wait(self, timeout: float = 60.0) -> bool:
        """Block until the view's computation has finished (scripts, notebooks, tests)."""
        return self.runner.wait(timeout)


def class_names(model: torch.nn.Module, count: int) -> list[str]:
    from ..core.model import spec_of

    classes = spec_of(model).classes
    return [classes[i] if classes is not None and i < len(classes) else str(i) for i in range(count)]


def spatial_layers(model: torch.nn.Module, images: Images) -> list:
    """The model's spatial layers (LayerInfo) at the size of the first image."""
    with look(model) as session:
        size = tuple(images[0][0].shape[-2:])
        found = [info for info in session.layers(size) if info.spatial]
    if not found:
        raise ValueError(f"model: {type(model).__name__} has no spatial layer (one with a C×H×W output) at input "
                         f"size {size}; the views look at feature maps, so they need a convolutional model. "
                         "Gradient methods such as cnnlens.saliency still work on it.")
    return found
