"""Building ipywidgets controls from the method registry and the model's predictions."""

from __future__ import annotations

import ipywidgets as W
import torch

from ..core.display import COLORMAPS
from ..core.objectives import class_probabilities
from ..explain.registry import Control


def control_widget(control: Control) -> W.Widget:
    """A slider or dropdown for one registry :class:`Control`."""
    style = {"description_width": "initial"}
    if control.kind == "int":
        return W.IntSlider(value=control.default, min=control.low, max=control.high, step=control.step or 1,
                           description=control.name, continuous_update=False, style=style)
    if control.kind == "float":
        return W.FloatSlider(value=control.default, min=control.low, max=control.high, step=control.step or 0.01,
                             description=control.name, continuous_update=False, style=style)
    if control.kind == "choice":
        return W.Dropdown(options=list(control.choices), value=control.default, description=control.name,
                          style=style)
    raise ValueError(f"Unknown control kind {control.kind!r}. Valid: int, float, choice.")


def target_options(logits: torch.Tensor, names: list[str]) -> list[tuple[str, int]]:
    """Target-class dropdown options: predicted class first, each with its probability."""
    probs = class_probabilities(logits.detach().float(), 0)
    order = probs.argsort(descending=True).tolist()
    return [(f"{names[i]} ({float(probs[i]):.1%})", i) for i in order]


def display_controls() -> tuple[W.Dropdown, W.FloatSlider, W.Checkbox]:
    """Colormap, opacity and signed display: linked to panels in the browser, no round trip."""
    return (W.Dropdown(options=list(COLORMAPS), value="magma", description="colormap"),
            W.FloatSlider(value=0.6, min=0.0, max=1.0, step=0.05, description="opacity"),
            W.Checkbox(value=False, description="signed"))


def link_display(controls: tuple[W.Dropdown, W.FloatSlider, W.Checkbox], panel) -> list[W.Widget]:
    """Link the display controls to ``panel`` in the browser; returns the link widgets (close them with the view)."""
    cmap, opacity, signed = controls
    return [W.jslink((cmap, "index"), (panel, "cmap_index")),  # Dropdown syncs its index, not its value
            W.jslink((opacity, "value"), (panel, "opacity")),
            W.jslink((signed, "value"), (panel, "signed"))]
