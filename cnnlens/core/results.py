"""Result types returned by the methods: plain data, drawable on demand."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .figures import new_figure, show_figure


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

    def figure(self, image: Any = None, cmap: str = "magma", alpha: float = 0.55, *, figure: Any = None):
        """A matplotlib figure of the map, over ``image`` when given (a tensor, numpy array, PIL image or
        path, one per map for a batch). Imports matplotlib lazily; draws into ``figure`` when given."""
        from .images import to_batch

        maps = self.map if self.map.dim() == 3 else self.map[None]
        images = None
        if image is not None:
            images = to_batch(image, channels=None, size=None, device=torch.device("cpu"), dtype=torch.float32,
                              argument="image").x
            if len(images) != len(maps):
                raise ValueError(f"image: {len(images)} image(s) for {len(maps)} map(s).")
        fig = new_figure(figure)
        fig.set_size_inches(3 * len(maps), 3)
        for i, m in enumerate(maps):
            ax = fig.add_subplot(1, len(maps), i + 1)
            if images is not None:
                img = images[i][:3] if images[i].shape[0] >= 3 else images[i][:1].expand(3, -1, -1)
                ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), extent=(0, m.shape[1], m.shape[0], 0))
            ax.imshow(m.float().cpu().numpy(), cmap=cmap, alpha=alpha if images is not None else 1.0)
            ax.set_title(f"{self.method} · {self.target}", fontsize=8)
            ax.axis("off")
        return fig

    def show(self, image: Any = None, **kwargs: Any) -> None:
        """Display :meth:`figure`: inline in a notebook, in a window (``pyplot.show``) in a plain script."""
        show_figure(lambda figure: self.figure(image, figure=figure, **kwargs))


@dataclass
class Synthesis:
    """Images a model was optimized to respond to.

    ``images`` is N×C×H×W in [0, 1] (one per target and start, in that
    order); ``history`` the objective's value per step (steps×N);
    ``predictions`` the model's top classes on each image; ``confidence``
    the model's probability of the target class on each image, for class
    targets (None otherwise); ``target`` one description per image.
    """

    images: torch.Tensor
    history: torch.Tensor
    predictions: list
    target: list[str]
    params: dict[str, Any]
    confidence: torch.Tensor | None = None

    def figure(self, columns: int = 4, *, figure: Any = None):
        """A matplotlib figure with every image and its target (and confidence), ``columns`` per row (four keep
        the titles readable in a notebook's width). Imports matplotlib lazily."""
        if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
            raise ValueError(f"columns must be an int ≥ 1, got {columns!r}.")
        n = len(self.images)
        cols = min(columns, n)
        rows = -(-n // cols)
        fig = new_figure(figure)
        fig.set_size_inches(2 * cols, 2.3 * rows)
        for i, image in enumerate(self.images):
            ax = fig.add_subplot(rows, cols, i + 1)
            img = image[:3] if image.shape[0] >= 3 else image[:1].expand(3, -1, -1)
            ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
            title = self.target[i] + (f" · {float(self.confidence[i]):.0%}" if self.confidence is not None else "")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        return fig
