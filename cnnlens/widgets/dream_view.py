"""Deep Dream view: the current image dreamed toward a layer or one of its units, octave by octave, live."""

from __future__ import annotations

from typing import Any

import ipywidgets as W
import torch

from ..core.objectives import channel
from ..synthesize.deepdream import MIN_OCTAVE_SIDE, deepdream
from .base import Images, spatial_layers
from .panel import Panel
from .synthesis import SynthesisView, save_button, style


class DreamView(SynthesisView):
    """Layer, unit (-1: the whole layer's L2 norm, Google's default), octaves, octave scale, step size and
    steps → the current image dreamed, streamed every few steps and after each octave.

    ``steps``/``octaves`` set the initial controls (the engine's defaults: 10 steps, 4 octaves).
    """

    uses_image = True

    def __init__(self, model: torch.nn.Module, images: Any, index: W.IntSlider | None = None, *,
                 layer: str | None = None, unit: int = -1, octaves: int = 4, steps: int = 10,
                 step_size: float = 1.5, octave_scale: float = 1.4, seed: int = 0, active: bool = True):
        images = images if isinstance(images, Images) else Images(images, model)
        self.table = {info.name: info for info in spatial_layers(model, images)}
        names = list(self.table)
        layer = layer if layer is not None else names[len(names) * 2 // 3]  # a middle-deep layer
        if layer not in self.table:
            raise ValueError(f"Unknown layer {layer!r}. Layers with spatial output: {', '.join(names)}.")
        self.seed = seed
        self.layer = W.Dropdown(options=names, value=layer, description="layer")
        self.unit = W.IntSlider(value=unit, min=-1, max=self.table[layer].channels - 1, description="unit",
                                continuous_update=False, tooltip="-1: the whole layer (L2 norm of its activations)")
        self.octaves = W.IntSlider(value=octaves, min=1, max=8, description="octaves", continuous_update=False)
        self.octave_scale = W.FloatSlider(value=octave_scale, min=1.1, max=2.0, step=0.05, description="octave scale",
                                          continuous_update=False, style=style())
        self.step_size = W.FloatSlider(value=step_size, min=0.1, max=6.0, step=0.1, description="step size",
                                       continuous_update=False, style=style())
        self.steps = W.IntSlider(value=steps, min=1, max=max(100, steps), description="steps", continuous_update=False,
                                 tooltip="steps per octave")
        self.input_panel = Panel("image", "input", size=256)
        self.dream_panel = Panel("image", "dream", size=256)
        self.save = save_button(self, lambda: self.dream_panel)
        self.result = None
        self._name = ""
        super().__init__(model, images, [self.input_panel, self.dream_panel],
                         [self.layer, self.unit, self.octaves, self.octave_scale, self.step_size, self.steps,
                          self.save], index, active=active)
        self.watch(self.layer, self._layer_changed)
        for widget in (self.unit, self.octaves, self.octave_scale, self.step_size, self.steps):
            self.watch(widget, self.changed)
        self.request()

    def _layer_changed(self, change: dict) -> None:
        with self.hushed(self.unit):
            self.unit.max = self.table[self.layer.value].channels - 1
        self.changed(change)

    def refresh(self) -> None:
        self._check_open()
        image, _ = self.image
        model, layer, unit = self.model, self.layer.value, self.unit.value
        target = layer if unit < 0 else channel(layer, unit)
        what = f"{layer} (L2)" if unit < 0 else f"{layer}:{unit}"
        options = {"octaves": self.octaves.value, "octave_scale": self.octave_scale.value,
                   "step_size": self.step_size.value, "steps": self.steps.value, "seed": self.seed}
        self.input_panel.show(image, title="input")

        def job(progress, cancel, partial):
            return deepdream(model, image, target, **options, progress=progress, cancel=cancel, partial=partial)

        def draw(result, state):
            total = len(result.params["octave_sizes"])
            if state == "done":
                where = f"{total} octaves × {options['steps']} steps"
                if total < options["octaves"]:  # the smallest would be under MIN_OCTAVE_SIDE: left out, said so
                    where = f"{total} of {options['octaves']} octaves (smaller than {MIN_OCTAVE_SIDE} px left out) " \
                            f"× {options['steps']} steps"
            else:
                octave, step = result.params["octave"], result.params["step"]
                where = f"{'stopped at ' if state == 'stopped' else ''}octave {octave}/{total}, " \
                        f"step {step}/{options['steps']}"
            value = float(result.history[-1].mean()) if len(result.history) else float("nan")
            self.result, self._name = result, what.replace(" (L2)", "").replace(":", "_")
            self.dream_panel.show(result.images[0], title=f"dream of {what} · {where} · objective {value:.3g}")
            self.save.disabled = False

        self.stream_job(job, draw)

    def current_image(self) -> torch.Tensor | None:
        return None if self.result is None else self.result.images[0]

    def filename(self) -> str:
        return f"dream_{self._name}.png".replace("/", "_")
