"""Embedding view: the images of a dataset as points in 2-D, layer by layer, coloured by label or prediction.

The first job reads the pooled vectors of every layer on the slider in one pass (small: N×C each) and the
thumbnails; each layer's layout is computed when the slider first reaches it (t-SNE streams while it
converges) and kept by the view's :class:`~cnnlens.dataset.embed.Embedder`, so moving back is instant.

Hovering a point shows its thumbnail: all thumbnails travel once, as one compact atlas of small RGB tiles
(about 4 MB at most), so hovering never waits for the kernel (busy with t-SNE, or gone in an exported
page). Clicking a point makes its image the current one (the shared image picker); the current image is
ringed in the scatter.
"""

from __future__ import annotations

import math
from typing import Any

import ipywidgets as W
import numpy as np
import torch
import torch.nn.functional as F

from ..core.data import batches
from ..core.model import LayerInfo
from ..core.session import look
from ..dataset.embed import METHODS, Embedder, Embedding
from .base import Images, class_names
from .panel import Panel
from .synthesis import SynthesisView, style

MAX_SLIDER_LAYERS = 8  # layers on the depth slider by default
ATLAS_BYTES = 4_000_000  # thumbnails sent for hovering, at most (their side shrinks with the number of images)
KNN = 10  # neighbours of the k-NN accuracy shown in the title
METHOD_NAMES = {"tsne": "t-SNE", "pca": "PCA", "umap": "UMAP"}


def depth_layers(table: list[LayerInfo], count: int = MAX_SLIDER_LAYERS) -> list[LayerInfo]:
    """Up to ``count`` layers from input to output for the depth slider: the top-level modules when there are
    a few (else every layer), skipping C×1×1 outputs (a global pooling repeats its input's pooled vector),
    spread evenly with the first and the last kept."""
    vectors = [info for info in table if info.channels and (info.spatial or len(info.shape) == 1)]
    top = [info for info in vectors if "." not in info.name]
    chosen = top if len(top) >= 3 else vectors
    if len(chosen) <= count:
        return chosen
    picks = sorted({round(i * (len(chosen) - 1) / (count - 1)) for i in range(count)})
    return [chosen[i] for i in picks]


def thumbnails(model: torch.nn.Module, source: Any, indices: list[int], side: int) -> np.ndarray:
    """N×side×side×3 uint8 thumbnails of ``source``'s images at ``indices`` (as the model sees them)."""
    out = np.zeros((len(indices), side, side, 3), dtype=np.uint8)
    start = 0
    with look(model) as session, torch.no_grad():
        for batch in batches(source, 256, indices=indices):
            x = session.prepare(batch.images).x.float()
            x = x[:, :3] if x.shape[1] >= 3 else x[:, :1].expand(-1, 3, -1, -1)
            small = F.interpolate(x, size=(side, side), mode="area").clamp(0, 1)
            out[start:start + len(x)] = (small.permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
            start += len(x)
    return out


def atlas_side(n: int) -> int:
    """Thumbnail side for ``n`` images: the atlas stays under ``ATLAS_BYTES``, tiles between 16 and 48 px."""
    return int(min(48, max(16, math.sqrt(ATLAS_BYTES / (3 * max(n, 1))))))


class EmbeddingView(SynthesisView):
    """Layer (a depth slider), method, perplexity and colour (label or prediction) → a scatter of the images.

    ``layers``: the layers on the slider (default: up to 8 from input to output); ``max_images`` images are
    spread evenly over the data; ``seed`` fixes t-SNE and UMAP.
    """

    def __init__(self, model: torch.nn.Module, images: Any, index: W.IntSlider | None = None, *,
                 layers: list[str] | None = None, method: str = "tsne", max_images: int = 2000,
                 perplexity: float = 30.0, seed: int = 0, active: bool = True):
        images = images if isinstance(images, Images) else Images(images, model)
        methods = [m for m in METHODS if m != "umap" or _has_umap()]
        if method not in methods:
            raise ValueError(f"Unknown method {method!r}. Valid: {', '.join(methods)}"
                             + ("" if "umap" in methods else " (umap needs: pip install umap-learn)") + ".")
        self.embedder = Embedder(model, images.source, max_images=max_images)
        if layers is None:
            with look(model) as session:
                table = session.layers(self.embedder.image_size(session))
            infos = depth_layers(table)
            if not infos:
                raise ValueError(f"model: {type(model).__name__} has no layer with a vector or C×H×W output to "
                                 "embed; pass layers=[...].")
        else:
            infos = self.embedder.resolve(list(layers))
        self.names = [info.name for info in infos]
        default = self.embedder.resolve(None)[0].name if any(i.spatial for i in infos) else self.names[-1]
        self.seed = seed
        self.layer = W.SelectionSlider(options=self.names, value=default if default in self.names else self.names[-1],
                                       description="layer", continuous_update=False, style=style(),
                                       layout=W.Layout(width="420px"))
        self.method = W.Dropdown(options=[(METHOD_NAMES[m], m) for m in methods], value=method, description="method")
        self.perplexity = W.FloatSlider(value=perplexity, min=2.0, max=100.0, step=1.0, description="perplexity",
                                        continuous_update=False, disabled=method == "pca")
        self.color = W.ToggleButtons(options=[("label", 0), ("prediction", 1)], value=0, description="colour by",
                                     style=style())
        self.panel = Panel("scatter", "embedding", size=420)
        self.result: Embedding | None = None  # the embedding drawn last (partial, final or stopped)
        self._point: dict[int, int] = {}  # image index → point of the drawn embedding
        self._atlas_sent = False
        super().__init__(model, images, [self.panel], [self.layer, self.method, self.perplexity, self.color],
                         index, active=active)
        for widget in (self.layer, self.perplexity):
            self.watch(widget, self.changed)
        self.watch(self.method, self._method_changed)
        self.watch(self.color, lambda change: setattr(self.panel, "color_by", change["new"]))
        self.watch(self.panel, self._clicked, "selected")
        self.request()

    # --- controls -----------------------------------------------------------------------------

    def _method_changed(self, change: dict) -> None:
        self.perplexity.disabled = change["new"] == "pca"
        self.changed(change)

    def _clicked(self, change: dict) -> None:
        point = change["new"]
        if self.quiet(change) or self.result is None or not 0 <= point < len(self.result.indices):
            return
        self.index.value = int(self.result.indices[point])  # the current image everywhere (Lens tabs too)

    def image_changed(self) -> None:
        """The current image moved: ring its point (nothing is recomputed)."""
        with self.hushed(self.panel):
            self.panel.selected = self._point.get(self.index.value, -1)

    # --- compute ------------------------------------------------------------------------------

    def refresh(self) -> None:
        self._check_open()
        layer, method, names, embedder = self.layer.value, self.method.value, list(self.names), self.embedder
        options = {"method": method, "perplexity": float(self.perplexity.value), "seed": self.seed}
        need_atlas, model, source = not self._atlas_sent, self.model, self.images.source

        def job(progress, cancel, partial):
            if not embedder.cached(names):
                embedder.vectors(names, progress=progress, cancel=cancel)  # every slider layer in one pass
            atlas = thumbnails(model, source, embedder.positions, atlas_side(embedder.total)) if need_atlas else None
            result = embedder.embed(layer, **options, progress=progress, cancel=cancel,
                                    partial=lambda p: partial((p, atlas, None)))
            return result, atlas, _knn(result)

        self.stream_job(job, self._draw)

    def _draw(self, outcome: tuple, state: str) -> None:
        embedding, atlas, knn = outcome
        self.result = embedding
        self._point = {int(i): p for p, i in enumerate(embedding.indices.tolist())}
        known = embedding.labels >= 0
        title = f"{embedding.layer} · {METHOD_NAMES[embedding.method]} of {len(embedding.points)} images"
        if state == "running":
            title += " · converging…"
        elif state == "stopped":
            title += " · stopped"
        if knn is not None:
            title += f" · {knn[1]}-NN accuracy {knn[0]:.1%}"
        if known.any() and bool((embedding.predictions[known] >= 0).all()):
            title += f" (model {float((embedding.predictions[known] == embedding.labels[known]).float().mean()):.1%})"
        top = int(max(embedding.labels.max(), embedding.predictions.max())) + 1
        names = class_names(self.model, max(top, len(embedding.classes or ())))
        with self.hushed(self.panel):
            if atlas is not None:
                self.panel.atlas_shape = [len(atlas), atlas.shape[1]]
                self.panel.atlas = atlas.tobytes()
                self._atlas_sent = True
            self.panel.selected = self._point.get(self.index.value, -1)
            self.panel.show_scatter(embedding.points,
                                    torch.stack([embedding.labels, embedding.predictions, embedding.indices]),
                                    names, title=title)


def _knn(embedding: Embedding) -> tuple[float, int] | None:
    """The k-NN accuracy of the points on the labels and the neighbours it used (``KNN``, fewer on a few
    points), when at least two classes are known."""
    try:
        return embedding.knn_accuracy(k=KNN), embedding.knn_neighbours(k=KNN)
    except ValueError:
        return None


def _has_umap() -> bool:
    try:
        import umap  # noqa: F401
    except ImportError:
        return False
    return True
