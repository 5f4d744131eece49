"""Result types returned by the methods: plain data, drawable on demand."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Prediction:
    """One of the model's top predictions for an image."""

    index: int
    name: str
    prob: float


@dataclass
class Explanation:
    """A local explanation of one image or a batch.

    ``map`` is H×W (one image) or B×H×W (a batch) at the input's resolution;
    ``raw`` is the method's own output (e.g. C×H×W gradients) where it has one;
    ``predictions`` holds the model's top predictions (a list per image for a
    batch). Method-specific maps (occlusion's ``unit_map`` and ``label_map``)
    sit in ``extras`` and are also reachable as attributes.
    """

    map: torch.Tensor
    raw: torch.Tensor | None
    method: str
    target: str
    layer: str | None
    params: dict[str, Any]
    predictions: list
    extras: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        extras = self.__dict__.get("extras", {})
        if name in extras:
            return extras[name]
        raise AttributeError(f"Explanation of {self.__dict__.get('method')!r} has no attribute {name!r}.")

    def figure(self, image: torch.Tensor | None = None, cmap: str = "magma", alpha: float = 0.55):
        """A matplotlib figure of the map (over ``image`` when given). Imports matplotlib lazily."""
        import matplotlib.figure

        maps = self.map if self.map.dim() == 3 else self.map[None]
        fig = matplotlib.figure.Figure(figsize=(3 * len(maps), 3))
        for i, m in enumerate(maps):
            ax = fig.add_subplot(1, len(maps), i + 1)
            if image is not None:
                img = image if image.dim() == 3 else image[i]
                ax.imshow(img.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy())
            ax.imshow(m.cpu().numpy(), cmap=cmap, alpha=alpha if image is not None else 1.0)
            ax.set_title(f"{self.method} · {self.target}", fontsize=8)
            ax.axis("off")
        return fig

    def show(self, image: torch.Tensor | None = None, **kwargs: Any):
        """Display :meth:`figure` (in a notebook the figure renders inline)."""
        return self.figure(image, **kwargs)
