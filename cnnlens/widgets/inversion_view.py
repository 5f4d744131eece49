"""Inversion view: the current image reconstructed from its representation at several depths, with the errors."""

from __future__ import annotations

from typing import Any

import ipywidgets as W
import torch

from ..core.session import look
from ..synthesize.invert import STEPS, invert
from .base import Images
from .panel import Panel
from .synthesis import SynthesisView, save_button, tile_row

DEFAULT_LAYERS = 4


def default_layers(names: list[str]) -> list[str]:
    """Up to four layers spread over depth, preferring top-level modules (stages, blocks), the first left out."""
    top = [n for n in names if "." not in n] or names
    if len(top) <= DEFAULT_LAYERS:
        return top
    picks = sorted({round(k * (len(top) - 1) / DEFAULT_LAYERS) for k in range(1, DEFAULT_LAYERS + 1)})
    return [top[i] for i in picks]


SIDE = 160  # display pixels per image side: the input and every reconstruction


class InversionView(SynthesisView):
    """The layers to reconstruct from (one batched :func:`cnnlens.invert` call) and steps → the reconstructions
    side by side, shallow to deep, streamed while they converge, and their normalized reconstruction errors.

    ``layers``/``steps`` set the initial controls (default: four layers across depth, the engine's 400 steps).
    """

    uses_image = True

    def __init__(self, model: torch.nn.Module, images: Any, index: W.IntSlider | None = None, *,
                 layers: list[str] | None = None, steps: int | None = None, seed: int = 0, active: bool = True):
        images = images if isinstance(images, Images) else Images(images, model)
        with look(model) as session:
            table = session.layers(tuple(images[0][0].shape[-2:]))
        names = [info.name for info in table]
        layers = list(layers) if layers is not None else default_layers([i.name for i in table if i.spatial])
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise ValueError(f"Unknown layer {unknown[0]!r}. Layers: {', '.join(names)}.")
        self.order = {name: i for i, name in enumerate(names)}
        self.seed = seed
        self.layers = W.SelectMultiple(options=names, value=tuple(layers), description="layers", rows=6,
                                       tooltip="ctrl/shift-click to choose several")
        self.steps = W.IntSlider(value=steps or STEPS, min=1, max=max(2000, steps or 0), description="steps",
                                 continuous_update=False)
        self.input_panel = Panel("image", "input", size=SIDE)
        self.panel = Panel("image", "reconstructions", size=3 * SIDE)
        self.errors = Panel("bars", "reconstruction error ‖Φ(x) − Φ₀‖² / ‖Φ₀‖²")
        self.save = save_button(self, lambda: self.panel)
        self.result = None
        super().__init__(model, images, [self.input_panel, self.panel, self.errors],
                         [self.layers, self.steps, self.save], index, active=active)
        for widget in (self.layers, self.steps):
            self.watch(widget, self.changed)
        self.request()

    def refresh(self) -> None:
        self._check_open()
        image, _ = self.image
        model, steps = self.model, self.steps.value
        layers = sorted(self.layers.value, key=self.order.__getitem__)  # shallow to deep
        self.input_panel.show(image, title="input")
        if not layers:
            self.panel.fail("Choose at least one layer to reconstruct from.")
            return

        def job(progress, cancel, partial):
            return invert(model, image, layers, steps=steps, seed=self.seed, progress=progress, cancel=cancel,
                          partial=partial)

        def draw(result, state):
            done = len(result.history)
            errors = result.history[-1] if done else torch.full((len(layers),), float("nan"))
            where = {"running": f"step {done}/{steps}", "done": f"{steps} steps",
                     "stopped": f"stopped at step {done}/{steps}"}[state]
            self.result = result
            row = tile_row(result.images)
            with self.panel.hold_sync():  # each reconstruction at the input's scale, however many layers
                self.panel.size = round(SIDE * row.shape[-1] / result.images.shape[-1])
                self.panel.show(row, title=f"{' · '.join(layers)} (shallow → deep) · {where}")
            self.errors.show_bars([(name, float(e)) for name, e in zip(layers, errors)],
                                  title=f"reconstruction error per layer · {where}")
            self.save.disabled = False

        self.stream_job(job, draw)

    def current_image(self) -> torch.Tensor | None:
        return None if self.result is None else tile_row(self.result.images)

    def filename(self) -> str:
        layers = self.result.params["layers"] if self.result is not None else []
        return f"inversion_{'_'.join(layers)}.png".replace("/", "_")
