"""The Attribution view's "check" action: whether the map on screen deserves trust.

One click computes, for the current image, method, target and options, the
cascading randomization test (Spearman, |Spearman| and SSIM per layer), the
deletion and insertion curves with their areas and, when the data set gives
a ground-truth mask for the image, the pointing game and the mask overlap.
The numbers go to a bars panel (and its title), the curves to a small plot
rendered here (matplotlib's Agg canvas, no pyplot) and sent as an image. The
check runs on its own worker, so the map and the check never cancel each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ipywidgets as W
import numpy as np
import torch

from ..dataset.checks import ExplanationChecks, check_explanation
from ..dataset.metrics import mask_of
from ..explain.registry import MethodInfo
from .base import Images
from .live import LiveRunner
from .panel import Panel

CURVE_STEPS = 32  # deletion/insertion steps in the view (a quick look; bench/trust.py uses 64)


def numbers(report: ExplanationChecks) -> list[tuple[str, float]]:
    """The check's headline numbers as (name, value in [0, 1]) bars, with the direction that is better: the
    randomization's mean |ρ| (lower is better), the deletion and insertion areas, the pointing game and the mask
    overlap."""
    bars = []
    if report.sanity is not None:
        verdict = "passes" if report.sanity.passes else "fails"
        bars.append((f"randomization: {verdict}", report.sanity.score))  # mean |ρ|, lower is better
    bars += [("deletion ↓", float(report.deletion.auc)), ("insertion ↑", float(report.insertion.auc))]
    if report.pointing is not None:
        bars += [(f"pointing: {'hit' if report.pointing else 'miss'}", float(report.pointing)),
                 ("mask overlap ↑", float(report.overlap))]
    return bars


def summary(report: ExplanationChecks) -> str:
    """One line of the numbers, for the panel's title."""
    parts = []
    if report.sanity is not None:
        parts.append(f"randomization {'passes' if report.sanity.passes else 'fails'} (|ρ| {report.sanity.score:.2f})")
    parts += [f"deletion {float(report.deletion.auc):.3f}", f"insertion {float(report.insertion.auc):.3f}"]
    if report.pointing is not None:
        parts += [f"pointing {'hit' if report.pointing else 'miss'}", f"overlap {report.overlap:.2f}"]
    return " · ".join(parts)


def plot(report: ExplanationChecks) -> torch.Tensor:
    """The randomization curves and the deletion and insertion curves side by side, as a 3×H×W image in [0, 1]."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.6, 3.1), dpi=100)
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.4, 1, 1]})
    if report.sanity is not None:
        report.sanity.plot(axes[0])
    else:
        axes[0].set_axis_off()
    report.deletion.plot(axes[1])
    report.insertion.plot(axes[2])
    for ax in axes:
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).float() / 255


class CheckAction:
    """The "check" button and the two panels it fills; ``request()`` gives (model, Images, image index, method's
    MethodInfo, target or None, method options) for the view's current state."""

    def __init__(self, request: Callable[[], tuple[torch.nn.Module, Images, int, MethodInfo, Any, dict[str, Any]]]):
        self.request = request
        self.button = W.Button(description="check", tooltip="Randomization test, deletion/insertion, pointing game "
                               "for the current map")
        self.numbers = Panel("bars", "checks")
        self.plot = Panel("image", "", max_side=1000, size=960)  # the figure's own pixels: crisp text
        self.box = W.HBox([self.numbers, self.plot], layout=W.Layout(flex_flow="row wrap", display="none"))
        self.runner = LiveRunner([self.numbers, self.plot])
        self.button.on_click(lambda _: self.run())

    def run(self) -> None:
        """Check the current map (in the check's own worker); the panels show progress, then the numbers."""
        model, images, index, info, target, options = self.request()
        item = images.source[index]
        mask = mask_of(item)
        image, _ = images[index]
        self.box.layout.display = None

        def compute(progress, cancel, _partial):
            report = check_explanation(model, image, info, target, mask=mask, steps=CURVE_STEPS, progress=progress,
                                       cancel=cancel, **options)
            return report, plot(report)

        def publish(outcome) -> None:
            report, picture = outcome
            self.numbers.show_bars(numbers(report), title=f"check · {info.label} · image {index}")
            self.plot.show(picture, title=summary(report))

        self.runner.submit(compute, publish)

    def hide(self) -> None:
        """The map changed: the shown check no longer describes it."""
        self.runner.stop()
        self.box.layout.display = "none"

    def close(self) -> None:
        self.runner.close()
