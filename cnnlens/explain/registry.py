"""The registry of local-explanation methods, read by the widgets to fill their controls.

Adding a method = one module plus one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .cam import cam
from .deconvnet import deconvnet
from .gradcam import gradcam
from .guided_backprop import guided_backprop
from .input_x_gradient import input_x_gradient
from .integrated_gradients import integrated_gradients
from .lime import HIDE, lime
from .occlusion import MASK_VALUES, occlusion
from .saliency import saliency
from .smoothgrad import smoothgrad


@dataclass(frozen=True)
class Control:
    """One user-settable option of a method, as a widget should offer it."""

    name: str
    kind: str  # "int", "float" or "choice"
    default: Any
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple[Any, ...] = ()


@dataclass(frozen=True)
class MethodInfo:
    """A method as the widgets see it: everything a view needs to call it, so views have no per-method cases.

    ``function(model, x, target, **options)`` is called with the values of ``controls`` as options, plus
    ``layer=`` when ``has_layer``, ``progress=`` and ``cancel=`` when ``long_running``, ``partial=callback``
    when ``streams`` (the function calls it with intermediate Explanations: occlusion's coarse pass, LIME's
    refits), and ``seed=0``
    when ``seeded`` (its randomness is reproducible, so a view shows the same map for the same controls).
    ``signed`` maps have a meaningful negative part (shown with a diverging colormap).
    """

    name: str
    label: str
    function: Callable[..., Any]
    summary: str
    has_layer: bool = False
    signed: bool = False
    long_running: bool = False
    streams: bool = False
    seeded: bool = False
    controls: tuple[Control, ...] = field(default_factory=tuple)


METHODS: dict[str, MethodInfo] = {m.name: m for m in (
    MethodInfo("saliency", "Gradient saliency", saliency, "max |∂score/∂pixel| over colour channels"),
    MethodInfo("smoothgrad", "SmoothGrad", smoothgrad, "saliency averaged over noisy copies", long_running=True,
               seeded=True, streams=True,  # the mean over the samples so far, after every batch
               controls=(Control("noise", "float", 0.15, 0.0, 0.5, 0.01), Control("samples", "int", 25, 1, 200, 1))),
    MethodInfo("integrated_gradients", "Integrated Gradients", integrated_gradients,
               "gradients integrated from a black baseline", signed=True, long_running=True,
               controls=(Control("steps", "int", 32, 2, 256, 1),)),
    MethodInfo("input_x_gradient", "Input × gradient", input_x_gradient, "pixel value times gradient", signed=True),
    MethodInfo("guided_backprop", "Guided backprop", guided_backprop, "gradient with guided ReLU backward"),
    MethodInfo("deconvnet", "DeconvNet", deconvnet, "Zeiler & Fergus projection to pixels"),
    MethodInfo("cam", "CAM", cam, "class activation map of a GAP + linear head", has_layer=True),
    MethodInfo("gradcam", "Grad-CAM", gradcam, "gradient-weighted activation map", has_layer=True),
    MethodInfo("occlusion", "Occlusion", occlusion, "target probability under a sliding gray square",
               long_running=True, streams=True,  # a coarse map (stride = mask size) first, then the final one
               controls=(Control("mask_size", "int", 16, 1, 64, 1), Control("stride", "int", 4, 1, 32, 1),
                         Control("mask_value", "choice", "gray", choices=MASK_VALUES))),
    # the view hides superpixels with gray, not the function's default (each superpixel's own mean colour, as
    # the reference implementation does): a flat-coloured object is one superpixel whose mean is itself, so
    # "hiding" it changes nothing and LIME cannot see it (the demo image: the hexagon unweighted, the weight on
    # the distractor star's mixed superpixel)
    MethodInfo("lime", "LIME", lime, "local linear surrogate on superpixels", signed=True, long_running=True,
               streams=True, seeded=True,
               controls=(Control("samples", "int", 300, 10, 2000, 10), Control("features", "int", 5, 1, 40, 1),
                         Control("hide", "choice", "gray", choices=HIDE))),
)}
