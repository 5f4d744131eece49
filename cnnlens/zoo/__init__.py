"""The embedded default: a procedural shapes dataset and a small CNN trained on it, offline."""

from __future__ import annotations

from functools import lru_cache

import torch

from ..core.model import configure
from .shapes_data import CLASSES, ShapesDataset
from .shapes_model import ShapesNet
from .train import HELD_OUT_SEED, WEIGHTS

__all__ = ["CLASSES", "ShapesDataset", "ShapesNet", "shapes", "shapes_model"]


@lru_cache(maxsize=4)
def _held_out(n: int) -> ShapesDataset:
    return ShapesDataset(n, seed=HELD_OUT_SEED)


def shapes_model() -> ShapesNet:
    """A fresh ShapesNet with the shipped trained weights, in eval mode, configured for cnnlens."""
    if not WEIGHTS.is_file():
        raise FileNotFoundError(f"The default model's weights are missing at {WEIGHTS}; "
                                "run `cnnlens train-default` to regenerate them.")
    model = ShapesNet()
    model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    model.eval()
    configure(model, input_size=(64, 64), classes=CLASSES)
    return model


def shapes(n: int = 500) -> tuple[ShapesNet, ShapesDataset]:
    """The trained default model and ``n`` held-out images (seed 0, never seen in training).

    ``data[i]`` is ``(image 3×64×64 in [0,1], label, mask 64×64 bool)``. The
    data is rendered on first use and cached; the model is new on every call.
    """
    return shapes_model(), _held_out(n)
