"""What every view shares: the model, an image source, a live runner and its panels."""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import ipywidgets as W
import torch

from ..core.data import is_one_image, split_item
from ..core.session import look
from ..core.shadow import weight_versions
from .controls import target_options
from .live import LiveRunner
from .panel import Panel


class Images:
    """Images to look at: a dataset (or a DataLoader: its dataset), a B×C×H×W tensor, a list of any images, or one
    image.

    A dataset's items may be images, tuples/lists (image first; the second element is the label when it is
    int-like, e.g. torchvision's ``(image, label)`` or the shapes data's ``(image, label, mask)``), or dicts
    (Hugging Face style) with the image and label under the keys ``core.data`` looks for.
    """

    def __init__(self, source: Any, model: torch.nn.Module):
        if isinstance(source, torch.utils.data.DataLoader):  # a view picks images one at a time, by index
            source = source.dataset
        self.source = [source] if is_one_image(source) else source
        self.model = model
        if not hasattr(self.source, "__len__") or len(self.source) == 0:
            raise ValueError("images must be a non-empty dataset, tensor batch or list of images.")

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int | None]:
        item, label = split_item(self.source[i])
        with look(self.model) as session:
            return session.prepare(item).x[0].detach(), label


def close_widgets(widget: W.Widget, keep: Sequence[W.Widget] = ()) -> None:
    """Close ``widget``, its children (recursively), layouts and styles, except the widgets in ``keep``."""
    if any(widget is k for k in keep) or widget is None:
        return
    for child in getattr(widget, "children", ()):
        close_widgets(child, keep)
    for part in (getattr(widget, "layout", None), getattr(widget, "style", None)):
        if isinstance(part, W.Widget):
            part.close()
    widget.close()


def close_with_front_end(widget: W.Widget) -> None:
    """Call ``widget.close()`` when the front end closes the widget's comm.

    ipywidgets 8 registers no close callback on its comm: a ``comm_close`` from the front end reaches
    ``comm.handle_close`` (through the kernel's CommManager) and stops there. This sets one.
    """
    ref = weakref.ref(widget)

    def closed(_msg: Any) -> None:
        target = ref()
        if target is not None:
            target.close()

    if widget.comm is not None and hasattr(widget.comm, "on_close"):
        widget.comm.on_close(closed)


class View(W.VBox):
    """A view: controls on top, panels below, recomputed live when a control changes.

    ``close()`` (or the front end closing the view) stops the worker thread, cancels the running job,
    closes the view's widgets and drops the model and images.
    """

    def __init__(self, model: torch.nn.Module, images: Any, panels: Sequence[Panel], controls: Sequence[W.Widget],
                 index: W.IntSlider | None = None):
        self._closed = False
        self._watching: list[tuple[W.Widget, Any, str]] = []
        self._links: list[W.Widget] = getattr(self, "_links", [])
        self._hush: set[int] = set()  # ids of widgets being set by the view itself: their observers stay quiet
        self._targets_for: tuple | None = None  # (image, weight versions) the target options were computed for
        self._target_chosen = False  # the user picked the target for this image (else: the predicted class)
        self.model = model
        self.images = images if isinstance(images, Images) else Images(images, model)
        self._own_index = index is None
        self.index = index or W.IntSlider(value=0, min=0, max=len(self.images) - 1, description="image")
        self.panels = list(panels)
        self.runner = LiveRunner(self.panels)
        self._rerun_when_shown = False  # a job was stopped because nothing of the view was on a page any more
        for panel in self.panels:
            panel.on_attach(self._attach_changed)
        self.controls = W.HBox(list(controls), layout=W.Layout(flex_flow="row wrap"))
        self.watch(self.index, lambda _: self.image_changed())
        own = [self.index] if self._own_index else []
        super().__init__(own + [self.controls, W.HBox(self.panels, layout=W.Layout(flex_flow="row wrap"))])
        close_with_front_end(self)

    # --- lifetime -----------------------------------------------------------------------------

    def watch(self, widget: W.Widget, handler: Any, names: str = "value") -> None:
        """``widget.observe(handler, names)``, undone by :meth:`close`."""
        widget.observe(handler, names)
        self._watching.append((widget, handler, names))

    @property
    def closed(self) -> bool:
        return self.__dict__.get("_closed", True)

    def _attach_changed(self, kind: str) -> None:
        """The browser made or removed a view of one of the panels. When the last one goes (the cell's output
        was cleared, the notebook closed) the running job is stopped: nobody sees it, and it would hold the
        CPU; when the view is shown again, that job runs again."""
        if self.closed:
            return
        if kind == "detached" and not any(panel.attached for panel in self.panels):
            if self.runner.working:
                self._rerun_when_shown = True
                self.runner.stop()
        elif kind == "attached" and self._rerun_when_shown:
            self._rerun_when_shown = False
            self.request()

    def close(self) -> None:
        """Stop the worker and its timers, cancel the running job, close every widget of the view, drop the model.

        A shared image picker (the Lens's) stays open. Closing twice is harmless.
        """
        if not self.__dict__.get("_closed", True):
            self._closed = True
            self.runner.close()
            for widget, handler, names in self._watching:
                widget.unobserve(handler, names)
            self._watching.clear()
            for link in self._links:
                link.close()
            self._links = []
            keep = [] if self._own_index else [self.index]
            for child in list(self.children):
                close_widgets(child, keep)
            for panel in self.panels:
                close_widgets(panel)
            self.model = self.images = None
            self.panels = []
            if isinstance(self.layout, W.Widget):
                self.layout.close()
        super().close()

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"This {type(self).__name__} is closed: it computes nothing more. Make a new view.")

    # --- images and targets -------------------------------------------------------------------

    @property
    def image(self) -> tuple[torch.Tensor, int | None]:
        self._check_open()
        return self.images[self.index.value]

    def refresh(self) -> None:
        """Recompute for the current controls (subclasses submit their job)."""
        raise NotImplementedError

    def image_changed(self) -> None:
        """The image picker moved: recompute (views with a target dropdown refill it in the same job)."""
        self.refresh()

    def quiet(self, change: dict) -> bool:
        """Whether an observed ``change`` was made by the view itself (filling a dropdown), not by the user."""
        return id(change["owner"]) in self._hush

    def request(self) -> None:
        """Recompute for the current controls (a :class:`Deferred` view: once it is active)."""
        self.refresh()

    def select(self, layer: str, unit: int) -> bool:
        """Show ``layer``:``unit`` (from a linked view): one recompute; no change event reaches other views.

        Returns False when this view has no such layer or unit.
        """
        moved = self.move_unit(layer, unit)
        if moved:
            self.request()
        return moved is not None

    def move_unit(self, layer: str, unit: int) -> bool | None:
        """Set this view's ``layer`` and ``unit`` controls quietly (for a linked view; the view has ``table``,
        ``layer`` and ``unit``): None when it has no such layer or unit, False when they already show it, True
        when they changed and the caller should recompute."""
        if self.closed or layer not in self.table or not 0 <= unit < self.table[layer].channels:
            return None
        if (layer, unit) == (self.layer.value, self.unit.value):
            return False
        with self.hushed(self.layer, self.unit):
            self.layer.value = layer
            self.unit.max = self.table[layer].channels - 1
            self.unit.value = unit
        return True

    @contextmanager
    def hushed(self, *widgets: W.Widget) -> Iterator[None]:
        """Changes made to ``widgets`` inside this block are the view's own: :meth:`quiet` is True for them."""
        ids = {id(w) for w in widgets} - self._hush
        self._hush |= ids
        try:
            yield
        finally:
            self._hush -= ids

    def submit_targeted(self, target: W.Dropdown, job: Any, draw: Any, keep_target: Any = None) -> None:
        """Submit ``job(target, image, progress, cancel, partial)``; publish with ``draw(target, result)``.

        When the dropdown was not yet filled for this image, or the weights moved since (a model in
        training), the job first runs one forward in the worker for the image's class probabilities;
        publishing then fills ``target`` (predicted class first) without a recompute. The target is the
        predicted class, or the class the user chose for this image (``keep_target``: chosen now).
        """
        self._check_open()
        index = self.index.value
        image, _ = self.image
        stamp = (index, weight_versions(self.model))
        new_image = self._targets_for is None or self._targets_for[0] != index
        stale = self._targets_for != stamp
        if keep_target is not None or new_image:
            self._target_chosen = keep_target is not None
        kept = not new_image and (self._target_chosen or not stale)
        chosen = keep_target if keep_target is not None else (target.value if kept else None)

        def compute(progress, cancel, partial):
            options = predicted = None
            if stale:
                options, predicted = self._target_options(image)
            value = chosen if chosen is not None else predicted

            def stream(result):
                partial((options, value, result))

            return options, value, job(value, image, progress, cancel, stream)

        def publish(outcome):
            options, value, result = outcome
            with self.hushed(target):
                if options is not None:
                    target.options = options
                    self._targets_for = stamp
                if target.value != value:  # the dropdown shows what was computed
                    target.value = value
            draw(value, result)

        self.runner.submit(compute, publish)

    def _target_options(self, image: torch.Tensor) -> tuple[list[tuple[str, int]], int]:
        """(target dropdown options, predicted class) for ``image``: one forward (run in the worker)."""
        with look(self.model) as session, torch.no_grad():
            logits = session.logits(image[None])[0]
        return target_options(logits, class_names(self.model, len(logits))), int(logits.argmax())

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


class Deferred:
    """For views that compute only while *active* (a Lens tab that is open): a change made while inactive is
    computed on :meth:`activate`. Mixed in before :class:`View`; the subclass sets ``_active``."""

    _active = True
    _stale = False

    @property
    def active(self) -> bool:
        return self._active

    def activate(self) -> None:
        """Compute from now on; catch up with a change made while inactive."""
        self._active = True
        if self._stale and not self.closed:
            self.request()

    def deactivate(self) -> None:
        """Defer new work until :meth:`activate` (a running job finishes)."""
        self._active = False

    def request(self) -> None:
        """Recompute now if active, else when activated."""
        if self.closed:
            return
        self._stale = not self._active
        if self._active:
            self.refresh()
