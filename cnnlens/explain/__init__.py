"""Local explanations: why this prediction for this input. One module per method."""

from .cam import cam
from .deconvnet import deconvnet
from .gradcam import gradcam
from .guided_backprop import guided_backprop
from .input_x_gradient import input_x_gradient
from .integrated_gradients import integrated_gradients
from .lime import lime
from .occlusion import occlusion
from .registry import METHODS, Control, MethodInfo
from .saliency import saliency
from .smoothgrad import smoothgrad

__all__ = [
    "METHODS", "Control", "MethodInfo", "cam", "deconvnet", "gradcam", "guided_backprop", "input_x_gradient",
    "integrated_gradients", "lime", "occlusion", "saliency", "smoothgrad",
]
