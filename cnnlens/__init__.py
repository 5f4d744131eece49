"""cnnlens: see inside a convolutional network, live in a notebook, on any PyTorch model.

    import cnnlens as cl
    model, data = cl.zoo.shapes()
    img, label, mask = data[0]
    cl.gradcam(model, img).map        # H×W heatmap at input resolution
"""

from . import zoo
from .core.model import InputSpec, LayerInfo, configure
from .core.objectives import Objective, channel, direction, logit, neuron, predicted, prob
from .core.progress import Cancelled, CancelToken
from .core.results import Explanation, Prediction, Synthesis
from .core.session import InputRangeWarning, layers
from .dataset import monitor
from .dataset.checks import ExplanationChecks, SanityCheck, check_explanation, sanity_check
from .dataset.embed import Embedder, Embedding, embed
from .dataset.health import HealthReport, filter_health
from .dataset.metrics import Curve, deletion, insertion, mask_overlap, pointing_game
from .dataset.scan import Scan, scan
from .explain import (
    METHODS,
    cam,
    deconvnet,
    gradcam,
    guided_backprop,
    input_x_gradient,
    integrated_gradients,
    lime,
    occlusion,
    saliency,
    smoothgrad,
)
from .synthesize import alpha_norm, deepdream, invert, l1, l2, total_variation, visualize

__version__ = "0.1.0"


def __getattr__(name: str):
    """``cl.Lens``, ``cl.demo`` and ``cl.widgets`` load the widget layer (ipywidgets, anywidget) on first use."""
    if name in ("Lens", "demo", "widgets"):
        import importlib

        widgets = importlib.import_module(f"{__name__}.widgets")
        return widgets if name == "widgets" else getattr(widgets, name)
    raise AttributeError(f"module 'cnnlens' has no attribute {name!r}")

__all__ = [
    "Embedder", "Embedding", "embed",
    "Scan", "scan",
    "Curve", "ExplanationChecks", "SanityCheck", "check_explanation", "deletion", "insertion", "mask_overlap",
    "pointing_game", "sanity_check",
    "METHODS", "CancelToken", "Cancelled", "Explanation", "InputRangeWarning", "InputSpec", "LayerInfo", "Lens",
    "Objective", "Prediction",
    "Synthesis", "alpha_norm", "deepdream", "demo", "invert", "l1", "l2", "total_variation", "visualize",
    "cam", "channel", "configure", "deconvnet", "direction", "gradcam", "guided_backprop", "input_x_gradient",
    "integrated_gradients", "layers", "lime", "logit", "neuron", "occlusion", "predicted", "prob", "saliency",
    "smoothgrad", "zoo", "monitor",
    "HealthReport", "filter_health",
]
