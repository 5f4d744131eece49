"""Classes view: a class visualization with the model's confidence, beside the fooling image of the same class."""

from __future__ import annotations

from typing import Any

import ipywidgets as W
import torch

from ..core.model import spec_of
from ..core.session import look
from ..synthesize.presets import preset as named_preset
from ..synthesize.visualize import visualize
from .base import Images, class_names
from .features_view import preset_options
from .panel import Panel
from .synthesis import SynthesisView, contrast_box, save_button, style, tile_row

FOOLING = "raw"  # plain gradient ascent: Nguyen et al.'s fooling images


class ClassesView(SynthesisView):
    """A class (by name) → two images the model was optimized to classify as it: ``raw`` gradient ascent
    (the fooling image: near-certain confidence, nothing like the class) beside a regularized preset
    (``lucid`` by default), each titled with the model's confidence. The raw image runs first (it is quick).

    ``steps`` fixes the steps of both (default: each preset's own).
    """

    def __init__(self, model: torch.nn.Module, images: Any, index: W.IntSlider | None = None, *,
                 target: int = 0, preset: str = "lucid", steps: int | None = None, seed: int = 0,
                 active: bool = True):
        images = images if isinstance(images, Images) else Images(images, model)
        classes = spec_of(model).classes
        if classes is None:  # no names configured: one forward counts the classes
            with look(model) as session, torch.no_grad():
                classes = class_names(model, int(session.logits(images[0][0][None]).shape[-1]))
        self.names = [str(c) for c in classes]
        # the size the model takes: configured, else the images' (a head of Flatten → Linear takes no other)
        self.side = tuple(spec_of(model).input_size or images[0][0].shape[-2:])
        self.steps = steps
        self.seed = seed
        self.target = W.Dropdown(options=[(name, i) for i, name in enumerate(self.names)], value=target,
                                 description="class")
        self.preset = W.Dropdown(options=[p for p in preset_options() if p != FOOLING],
                                 value=named_preset(preset).name, description="beside raw")
        self.strength = W.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="regularization",
                                      continuous_update=False, style=style(),
                                      tooltip="of the preset beside raw (raw has none)")
        self.contrast = contrast_box()
        self.raw_panel = Panel("image", "raw (fooling image)", size=224)
        self.regular_panel = Panel("image", "regularized", size=224)
        self.results: dict[str, Any] = {}  # preset name → the Synthesis drawn last in its panel (raw first)
        self._shown = ""  # the class drawn last
        self.save = save_button(self, lambda: self.regular_panel)
        super().__init__(model, images, [self.raw_panel, self.regular_panel],
                         [self.target, self.preset, self.strength, self.contrast, self.save], index, active=active)
        for widget in (self.target, self.preset, self.strength):
            self.watch(widget, self.changed)
        self.watch(self.contrast, self.redraw)
        self.request()

    def refresh(self) -> None:
        self._check_open()
        model, k, seed = self.model, self.target.value, self.seed
        name = self.names[k]
        runs = [(FOOLING, None, self.raw_panel), (self.preset.value, self.strength.value, self.regular_panel)]
        totals = [self.steps or named_preset(p).steps for p, _, _ in runs]

        def job(progress, cancel, partial):
            finished = []
            for i, (preset, strength, _) in enumerate(runs):
                before = sum(totals[:i])

                def moved(done, total, before=before):
                    if progress is not None:
                        progress(before + done, sum(totals))

                result = visualize(model, k, preset=preset, strength=strength, steps=totals[i], seed=seed,
                                   size=self.side,
                                   progress=moved, cancel=cancel,
                                   partial=lambda r, i=i: partial((finished + [r], i)))
                finished.append(result)
                if i + 1 < len(runs):
                    partial((list(finished), i))
            return finished, len(runs) - 1

        def draw(outcome, state):
            results, current = outcome
            for i, result in enumerate(results):
                preset, _, panel = runs[i]
                said = status(result, totals[i], state, i == current)
                panel.show(self.shown(result.images[:1])[0], title=f"{name} · {preset} · {said}")
            self.results = {runs[i][0]: r for i, r in enumerate(results)}
            self._shown = name
            self.save.disabled = False

        def status(result, total, state, current):
            if result.confidence is not None:  # a final image: the model's confidence in the class
                top = result.predictions[0][0] if result.predictions and result.predictions[0] else None
                other = f" · top: {top.name} {top.prob:.0%}" if top is not None and top.index != k else ""
                return f"P({name}) = {float(result.confidence[0]):.1%}{other}"
            done = len(result.history)
            where = f"stopped at step {done}/{total}" if state == "stopped" and current else f"step {done}/{total}"
            return f"{where} · logit {float(result.history[-1, 0]):.3g}" if done else where

        self.stream_job(job, draw)

    def current_image(self) -> torch.Tensor | None:
        """The comparison as drawn: the raw image and, once it has one, the regularized one beside it."""
        results = list(self.results.values())
        return tile_row(self.shown(torch.stack([r.images[0] for r in results]))) if results else None

    def filename(self) -> str:
        presets = "_".join(self.results) or self.preset.value
        return f"class_{self._shown}_{presets}.png".replace("/", "_")
