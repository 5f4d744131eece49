"""Features view: what a unit wants to see, optimized live, with its neighbouring units beside it."""

from __future__ import annotations

from typing import Any

import ipywidgets as W
import torch

from ..core.model import spec_of
from ..core.objectives import channel
from ..synthesize.presets import PRESETS
from ..synthesize.presets import preset as named_preset
from ..synthesize.visualize import visualize
from .base import Images, spatial_layers
from .panel import Panel
from .synthesis import SynthesisView, contrast_box, save_button, style, tile_row

PRESET_ORDER = ("lucid", "lucid-published", "yosinski", "keras", "raw",
                "yosinski1", "yosinski2", "yosinski3", "yosinski4")
MAX_STEPS = 2000


def preset_options() -> list[str]:
    return [p for p in PRESET_ORDER if p in PRESETS] + [p for p in PRESETS if p not in PRESET_ORDER]


def neighbour_units(unit: int, channels: int, around: int) -> list[int]:
    """``unit`` and up to ``around`` units on each side, the window shifted to stay inside the layer."""
    count = min(2 * around + 1, channels)
    start = min(max(unit - around, 0), channels - count)
    return list(range(start, start + count))


class FeaturesView(SynthesisView):
    """Layer, unit, preset, regularization strength, steps, size, starts and diversity → the unit's image.

    One batched :func:`cnnlens.visualize` call optimizes the unit and its neighbours (``neighbours`` on each
    side; 0 = none), streaming every few steps; the title shows the step and the objective. Click a
    neighbour to open it. ``steps``/``size`` fix the initial controls (default: the preset's steps, the
    model's input size); with ``steps`` given, changing the preset keeps it.
    """

    def __init__(self, model: torch.nn.Module, images: Any, index: W.IntSlider | None = None, *,
                 layer: str | None = None, unit: int = 0, preset: str = "lucid", steps: int | None = None,
                 size: int | None = None, neighbours: int = 2, seed: int = 0, active: bool = True):
        images = images if isinstance(images, Images) else Images(images, model)
        self.table = {info.name: info for info in spatial_layers(model, images)}
        names = list(self.table)
        layer = layer if layer is not None else names[-1]
        if layer not in self.table:
            raise ValueError(f"Unknown layer {layer!r}. Layers with spatial output: {', '.join(names)}.")
        chosen = named_preset(preset)
        self.seed = seed
        self._fixed_steps = steps is not None
        model_side = min(spec_of(model).input_size or tuple(images[0][0].shape[-2:]))
        side = size or model_side
        self.layer = W.Dropdown(options=names, value=layer, description="layer")
        self.unit = W.IntSlider(value=unit, min=0, max=self.table[layer].channels - 1, description="unit",
                                continuous_update=False)
        self.preset = W.Dropdown(options=preset_options(), value=chosen.name, description="preset")
        self.strength = W.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="regularization",
                                      continuous_update=False, style=style(),
                                      tooltip="0: none, 0.5: the preset's published settings, 1: twice those")
        self.steps = W.IntSlider(value=steps or chosen.steps, min=1, max=max(MAX_STEPS, steps or 0),
                                 description="steps", continuous_update=False)
        self.size = W.IntSlider(value=side, min=16, max=max(256, 2 * model_side, side), description="size",
                                continuous_update=False)
        self.starts = W.IntSlider(value=1, min=1, max=8, description="starts", continuous_update=False)
        self.diversity = W.FloatSlider(value=0.0, min=0.0, max=100.0, step=1.0, description="diversity",
                                       continuous_update=False, tooltip="Gram-matrix diversity between starts")
        self.neighbours = W.IntSlider(value=neighbours, min=0, max=4, description="neighbours",
                                      continuous_update=False, style=style(),
                                      tooltip="units on each side shown in the row (0: none)")
        self.contrast = contrast_box()
        self.image_panel = Panel("image", "unit", size=256)
        self.row = Panel("grid", "neighbouring units", size=384, zoomable=False, normalize=False)
        self.save = save_button(self, lambda: self.image_panel)
        self.result = None  # the Synthesis drawn last (partial, final or stopped)
        self._units: list[int] = []
        self._shown: tuple[slice, str] = (slice(0, 1), "")  # the drawn unit's images in result, and its name
        super().__init__(model, images, [self.image_panel, self.row],
                         [self.layer, self.unit, self.preset, self.strength, self.steps, self.size, self.starts,
                          self.diversity, self.neighbours, self.contrast, self.save], index, active=active)
        for widget in (self.unit, self.strength, self.steps, self.size, self.starts, self.diversity,
                       self.neighbours):
            self.watch(widget, self.changed)
        self.watch(self.layer, self._layer_changed)
        self.watch(self.preset, self._preset_changed)
        self.watch(self.row, self._row_clicked, "selected")
        self.watch(self.contrast, self.redraw)
        self.request()

    # --- controls -----------------------------------------------------------------------------

    def _layer_changed(self, change: dict) -> None:
        with self.hushed(self.unit):
            self.unit.max = self.table[self.layer.value].channels - 1
        self.changed(change)

    def _preset_changed(self, change: dict) -> None:
        if not self._fixed_steps:
            with self.hushed(self.steps):
                self.steps.value = named_preset(self.preset.value).steps
        self.changed(change)

    def _row_clicked(self, change: dict) -> None:
        t = change["new"]
        if not self.quiet(change) and 0 <= t < len(self._units) and self._units[t] != self.unit.value:
            self.unit.value = self._units[t]

    # --- compute ------------------------------------------------------------------------------

    def options(self) -> dict:
        """The keyword arguments of the visualize call the controls ask for."""
        return {"preset": self.preset.value, "strength": self.strength.value, "steps": self.steps.value,
                "size": self.size.value, "starts": self.starts.value, "diversity": self.diversity.value,
                "seed": self.seed}

    def refresh(self) -> None:
        self._check_open()
        layer, unit, model = self.layer.value, self.unit.value, self.model
        units = neighbour_units(unit, self.table[layer].channels, self.neighbours.value)
        main = units.index(unit)
        options = self.options()

        def job(progress, cancel, partial):
            return visualize(model, [channel(layer, u) for u in units], **options, progress=progress,
                             cancel=cancel, partial=partial)

        def draw(result, state):
            starts = options["starts"]
            done, total = len(result.history), options["steps"]
            mine = slice(main * starts, (main + 1) * starts)
            value = float(result.history[-1, mine].mean()) if done else float("nan")
            where = {"running": f"step {done}/{total}", "done": f"{total} steps",
                     "stopped": f"stopped at step {done}/{total}"}[state]
            self.result, self._units = result, units
            self._shown = (mine, f"{layer}_{unit}_{options['preset']}")
            self.image_panel.show(tile_row(self.shown(result.images[mine])),
                                  title=f"{layer}:{unit} · {options['preset']} · {where} · objective {value:.3g}")
            self.row.layout.display = None if len(units) > 1 else "none"
            if len(units) > 1:
                with self.hushed(self.row):
                    self.row.columns = len(units)
                    self.row.tile_names = [f"unit {u}" for u in units]
                    self.row.show_grid(self.shown(result.images[::starts]),
                                       title=f"{layer}: units {units[0]}–{units[-1]} · click one to open it")
                    self.row.selected = main
            self.save.disabled = False

        self.stream_job(job, draw)

    # --- saving -------------------------------------------------------------------------------

    def current_image(self) -> torch.Tensor | None:
        return None if self.result is None else tile_row(self.shown(self.result.images[self._shown[0]]))

    def filename(self) -> str:
        return f"{self._shown[1]}.png".replace("/", "_")
