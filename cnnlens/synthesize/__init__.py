"""Global explanations: images a unit or a class wants to see (activation maximization, class visualization).

Lucent's split, one concept per module: ``param`` (pixel and Fourier/decorrelated
parametrizations), ``transforms`` (random tensor→tensor closures), ``regularizers``
(objectives on the image, and between-step rules), ``presets`` (the schools as
data), ``render`` (the one optimization loop), and one module per method.
"""

from .deepdream import deepdream
from .invert import invert
from .presets import PRESETS, Preset
from .regularizers import alpha_norm, l1, l2, total_variation
from .visualize import visualize

__all__ = ["PRESETS", "Preset", "alpha_norm", "deepdream", "invert", "l1", "l2", "total_variation", "visualize"]
