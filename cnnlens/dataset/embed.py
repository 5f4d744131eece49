"""Embeddings of activations: where each image of a dataset lands when a layer's code is drawn in 2-D.

One pass over the data captures every requested layer at once and keeps only
its global-average-pooled vector per image (N×C per layer: a few MB for tens
of thousands of images, whatever the feature maps' size), with the labels and
the model's predictions. The vectors are then laid out in 2-D by a library
made for it: openTSNE for t-SNE, scikit-learn for PCA, umap-learn (optional)
for UMAP.

:class:`Embedder` is the cache: it keeps the vectors of one dataset per layer
for as long as the model's weights stay the same (an optimizer step makes it
read the data again), and the 2-D points per (layer, method, options), so a
view that moves back to a layer it has shown redraws at once. There is no
hidden global cache keyed by the data's identity, which could go stale or pin
a dataset in memory: whoever wants the cache keeps the object.
:func:`embed` is the one-shot form.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.data import batches, count, split_item, warn_if_renumbered
from ..core.figures import new_figure, show_figure
from ..core.hooks import tensor_output_hooks
from ..core.model import LayerInfo, spec_of, unwrap
from ..core.progress import CancelToken, ProgressFn, Steps
from ..core.session import Session, look, redone_when_weights_move, select_output
from ..core.shadow import named_modules
from ..explain._common import positive_int

METHODS = ("tsne", "pca", "umap")
TSNE_CALLBACK_EVERY = 25  # t-SNE iterations between two progress reports (and partial layouts)
TSNE_ITERATIONS = 750  # openTSNE's defaults: 250 early-exaggeration iterations, then 500
MAX_LAYOUTS = 32  # 2-D layouts an Embedder keeps (least recently used dropped)

Partial = Callable[["Embedding"], None]


@dataclass
class Embedding:
    """Images of a dataset as points in 2-D, from one layer's pooled activations.

    ``points`` is N×2 (float32, CPU); ``labels`` the dataset's labels (−1 where it gives none),
    ``predictions`` the model's top class (−1 when its output is not class scores) and ``indices`` each
    point's position in the data, all N long tensors in the same order. ``classes`` names the labels
    when the model knows them; ``params`` holds the method's options (the perplexity actually used, ...).
    """

    points: torch.Tensor
    labels: torch.Tensor
    predictions: torch.Tensor
    indices: torch.Tensor
    layer: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    classes: tuple[str, ...] | None = None

    def knn_accuracy(self, k: int = 10, folds: int = 5, of: str = "labels") -> float:
        """How well the 2-D points alone predict ``of`` ("labels" or "predictions"): the cross-validated
        accuracy of a ``k``-nearest-neighbour classifier (scikit-learn), over the points where it is known
        (with :meth:`knn_neighbours` neighbours: fewer than ``k`` on a few points)."""
        from sklearn.model_selection import StratifiedKFold, cross_val_score
        from sklearn.neighbors import KNeighborsClassifier

        known, y, splits = self._folds(folds, of)
        classifier = KNeighborsClassifier(n_neighbors=self.knn_neighbours(k, folds, of))
        scores = cross_val_score(classifier, self.points[known].numpy(), y,
                                 cv=StratifiedKFold(splits, shuffle=True, random_state=0))
        return float(scores.mean())

    def knn_neighbours(self, k: int = 10, folds: int = 5, of: str = "labels") -> int:
        """The neighbours :meth:`knn_accuracy` uses: ``k``, or as many as its smallest training fold holds."""
        _, y, splits = self._folds(folds, of)
        smallest_fit = len(y) - -(-len(y) // splits)  # the points a fold's classifier is fitted on, at fewest
        return max(1, min(k, smallest_fit))

    def _folds(self, folds: int, of: str) -> tuple[torch.Tensor, np.ndarray, int]:
        """The points where ``of`` is known, its values there, and the number of cross-validation folds."""
        if of not in ("labels", "predictions"):
            raise ValueError(f"of must be 'labels' or 'predictions', got {of!r}.")
        target = getattr(self, of)
        known = target >= 0
        y = target[known].numpy()
        _, sizes = np.unique(y, return_counts=True)
        if len(sizes) < 2:
            raise ValueError(f"knn_accuracy needs at least two classes among the known {of}.")
        return known, y, max(2, min(folds, int(sizes.min())))

    def figure(self, color: str = "labels", *, figure: Any = None):
        """A matplotlib scatter of the points coloured by ``color`` ("labels" or "predictions"), with a legend.
        Imports matplotlib lazily; draws into ``figure`` when given."""
        from ..core.display import label_colors

        if color not in ("labels", "predictions"):
            raise ValueError(f"color must be 'labels' or 'predictions', got {color!r}.")
        values = getattr(self, color)
        fig = new_figure(figure, figsize=(5, 4.5))
        ax = fig.add_subplot(1, 1, 1)
        palette = label_colors(max(len(self.classes or ()), int(values.max()) + 1, 1)) / 255
        for value in torch.unique(values).tolist():
            chosen = values == value
            ax.scatter(*self.points[chosen].T.numpy(), s=6, color="lightgray" if value < 0 else palette[value],
                       label="unknown" if value < 0 else self.class_name(value))
        ax.set_title(f"{self.method} of {self.layer} · coloured by {color}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, markerscale=2, loc="best")
        return fig

    def show(self, color: str = "labels") -> None:
        """Display :meth:`figure`: inline in a notebook, in a window in a plain script."""
        show_figure(lambda figure: self.figure(color, figure=figure))

    def class_name(self, index: int) -> str:
        return self.classes[index] if self.classes is not None and 0 <= index < len(self.classes) else str(index)


@dataclass
class _Vectors:
    """What one pass over the data found: pooled vectors per layer, labels and predictions."""

    by_layer: dict[str, torch.Tensor]
    labels: torch.Tensor
    predictions: torch.Tensor
    indices: torch.Tensor


class Embedder:
    """Embeddings of one dataset through one model, cached per layer (see the module doc).

    ``max_images`` takes that many images spread evenly over the data (a DataLoader: the first it
    yields); ``batch_size`` and ``num_workers`` are how the data is read (a DataLoader keeps its own); on
    the CPU each batch goes through the model in heap-sized parts (:meth:`Session.heap_parts`).
    """

    def __init__(self, model: nn.Module, data: Any, *, max_images: int | None = None, batch_size: int = 64,
                 num_workers: int = 0):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        self.model = model
        self.data = data
        self.batch_size = positive_int(batch_size, "batch_size")
        self.num_workers = positive_int(num_workers, "num_workers", 0)
        total = count(data)
        if total == 0:
            raise ValueError("data holds no images.")
        if max_images is not None:
            positive_int(max_images, "max_images")
        self.total = total if max_images is None else min(total, max_images)
        warn_if_renumbered(data, "embed")
        ordered = isinstance(data, torch.utils.data.DataLoader)  # it decides its own order: its first images
        self._chosen = None if self.total == total or ordered else _spread(total, self.total)
        self._size: tuple[int, int] | None = None
        self._version: tuple | None = None
        self._vectors: _Vectors | None = None
        self._layouts: OrderedDict[tuple, Embedding] = OrderedDict()

    @property
    def positions(self) -> list[int]:
        """The positions in the data of the images embedded (a DataLoader: the first ``total`` it yields)."""
        return list(range(self.total)) if self._chosen is None else list(self._chosen)

    # --- layers -------------------------------------------------------------------------------

    def resolve(self, layers: str | nn.Module | None | Sequence[str | nn.Module | None]) -> list[LayerInfo]:
        """The layers asked for (a name, a module, None = the last spatial layer, or a list of those), or a
        ValueError listing the valid ones."""
        if isinstance(layers, (list, tuple)):
            if not layers:
                raise ValueError("layer: an empty list; give a layer name, None or a non-empty list.")
            asked = list(layers)
        else:
            asked = [layers]
        for name in asked:
            if name is not None and not isinstance(name, (str, nn.Module)):
                raise TypeError(f"layer must be a layer name, a module of the model, None or a list of those; "
                                f"got {type(name).__name__}.")
        with look(self.model) as session:
            size = self.image_size(session)
            return [session.layer(name, size, spatial=name is None, argument="layer") for name in asked]

    def image_size(self, session: Session) -> tuple[int, int]:
        """The model's input size for this data (its configured size, else the first image's)."""
        if self._size is None:
            if session.spec.input_size is not None:
                self._size = tuple(session.spec.input_size)
            else:
                self._size = tuple(session.prepare(_first_image(self.data)).x.shape[-2:])
        return self._size

    # --- vectors ------------------------------------------------------------------------------

    def batch_count(self) -> int:
        """How many batches one pass over the chosen images reads."""
        loader = getattr(self.data, "batch_size", None) if isinstance(self.data, torch.utils.data.DataLoader) else None
        return -(-self.total // (loader or self.batch_size))

    def cached(self, layers: Sequence[str]) -> bool:
        """Whether the vectors of every one of ``layers`` are known for the model's current weights."""
        return (self._vectors is not None and self._version == _weights_version(self.model)
                and all(name in self._vectors.by_layer for name in layers))

    @redone_when_weights_move
    def vectors(self, layers: Any = None, *, progress: ProgressFn | None = None,
                cancel: CancelToken | Callable[[], bool] | None = None) -> dict[str, torch.Tensor]:
        """The pooled activation vectors (N×C float32, CPU) of ``layers``, read in one pass when not cached."""
        infos = self.resolve(layers)
        steps = Steps(0 if self.cached([i.name for i in infos]) else self.batch_count(), progress, cancel)
        found = self._ensure(infos, steps)
        return {info.name: found.by_layer[info.name] for info in infos}

    def _ensure(self, infos: list[LayerInfo], steps: Steps) -> _Vectors:
        names = [info.name for info in infos]
        version = _weights_version(self.model)
        if self._version != version:
            self._vectors, self._version = None, version
            self._layouts.clear()
        if self.cached(names):
            return self._vectors
        missing = [info for info in infos if self._vectors is None or info.name not in self._vectors.by_layer]
        found = self._read(missing, steps)  # weights moved meanwhile: look() raises and the call is redone
        if self._vectors is not None:
            found.by_layer.update(self._vectors.by_layer)
        self._vectors = found
        return found

    def _read(self, infos: list[LayerInfo], steps: Steps) -> _Vectors:
        """One pass over the chosen images: every layer of ``infos`` pooled in its hook (nothing big is kept)."""
        chunks: dict[str, list[torch.Tensor]] = {info.name: [] for info in infos}
        labels: list[int] = []
        predictions: list[torch.Tensor] = []
        indices: list[int] = []
        spatial = {info.name: info.spatial for info in infos}
        pooled: dict[str, torch.Tensor] = {}

        def record(name: str, _module: nn.Module, output: torch.Tensor) -> None:
            pooled[name] = _pool(output, spatial[name])  # a reused module keeps its last call

        with look(self.model) as session, torch.no_grad():
            modules = named_modules(session.net)
            with tensor_output_hooks({info.name: modules[info.name] for info in infos}, record):
                for batch in self._batches():
                    steps.check()
                    for x in session.heap_parts(session.prepare(batch.images).x):
                        pooled.clear()
                        out = session.raw_forward(x)
                        for name in chunks:
                            if name not in pooled:
                                raise RuntimeError(f"Layer {name!r} did not run in the forward pass, so it has no "
                                                   "activation.")
                            chunks[name].append(pooled[name].to("cpu", torch.float32))
                        predictions.append(_predicted(out, session.spec.output, len(x)))
                    labels += [-1 if label is None else label for label in batch.labels]
                    indices += batch.indices
                    steps.advance()
        return _Vectors({name: torch.cat(parts) for name, parts in chunks.items()},
                        torch.tensor(labels, dtype=torch.long), torch.cat(predictions),
                        torch.tensor(indices, dtype=torch.long))

    def _batches(self):
        if not isinstance(self.data, torch.utils.data.DataLoader):
            yield from batches(self.data, self.batch_size, num_workers=self.num_workers, indices=self._chosen)
            return
        left = self.total
        for batch in batches(self.data):
            if left <= 0:
                return
            if len(batch.indices) > left:
                batch.images, batch.labels, batch.indices = (batch.images[:left], batch.labels[:left],
                                                              batch.indices[:left])
            left -= len(batch.indices)
            yield batch

    # --- layouts ------------------------------------------------------------------------------

    @redone_when_weights_move
    def embed(self, layer: Any = None, *, method: str = "tsne", perplexity: float = 30.0, seed: int = 0,
              progress: ProgressFn | None = None, cancel: CancelToken | Callable[[], bool] | None = None,
              partial: Partial | None = None) -> Embedding | list[Embedding]:
        """The 2-D embedding of ``layer`` (one per layer, in order, for a list; all read in one pass).

        ``partial`` receives the t-SNE layout every few iterations while it converges.
        """
        if method not in METHODS:
            raise ValueError(f"Unknown method {method!r}. Valid: {', '.join(METHODS)}.")
        if isinstance(perplexity, bool) or not isinstance(perplexity, (int, float)) or not perplexity > 0:
            raise ValueError(f"perplexity must be a number > 0, got {perplexity!r}.")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}.")
        if method == "umap":
            _umap()  # a clear error before any work when umap-learn is missing
        infos = self.resolve(layer)
        names = [info.name for info in infos]
        read = 0 if self.cached(names) else self.batch_count()
        keys = [(name, method, float(perplexity), seed) for name in names]
        todo = sum(key not in self._layouts for key in keys) if read == 0 else len(keys)
        per_layout = TSNE_ITERATIONS // TSNE_CALLBACK_EVERY if method == "tsne" else 1
        steps = Steps(read + todo * per_layout, progress, cancel)
        found = self._ensure(infos, steps)
        out = []
        for info, key in zip(infos, keys):
            if key not in self._layouts:
                def stream(points: np.ndarray, name: str = info.name) -> None:
                    partial(self._embedding(found, name, method, points, {"partial": True}))

                points, params = _layout(found.by_layer[info.name], method, float(perplexity), seed, steps,
                                         stream if partial is not None else None)
                self._layouts[key] = self._embedding(found, info.name, method, points, params)
                while len(self._layouts) > MAX_LAYOUTS:
                    self._layouts.popitem(last=False)
            self._layouts.move_to_end(key)
            out.append(self._layouts[key])
        return out if isinstance(layer, (list, tuple)) else out[0]

    def _embedding(self, found: _Vectors, layer: str, method: str, points: np.ndarray,
                   params: dict[str, Any]) -> Embedding:
        return Embedding(torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)), found.labels,
                         found.predictions, found.indices, layer, method, params, spec_of(self.model).classes)


@redone_when_weights_move
def embed(model: nn.Module, data: Any, layer: Any = None, *, method: str = "tsne", max_images: int | None = None,
          perplexity: float = 30.0, seed: int = 0, batch_size: int = 64, num_workers: int = 0,
          progress: ProgressFn | None = None, cancel: CancelToken | Callable[[], bool] | None = None,
          partial: Partial | None = None) -> Embedding | list[Embedding]:
    """Images of ``data`` as points in 2-D, from ``layer``'s activations (global-average pooled when spatial).

    ``data``: a dataset, DataLoader, B×C×H×W tensor or list of images (labels read as ``core.data`` does).
    ``layer``: a name, a module, None (the last spatial layer) or a list of those — one Embedding per layer,
    all from one pass over the data. ``method``: "tsne" (openTSNE, seeded), "pca" (scikit-learn) or "umap"
    (needs umap-learn). ``max_images``: that many images spread evenly over the data. Keep an
    :class:`Embedder` instead to reuse the vectors across layers, methods and calls.
    """
    embedder = Embedder(model, data, max_images=max_images, batch_size=batch_size, num_workers=num_workers)
    return embedder.embed(layer, method=method, perplexity=perplexity, seed=seed, progress=progress,
                          cancel=cancel, partial=partial)


# --- helpers ------------------------------------------------------------------------------------


def _layout(vectors: torch.Tensor, method: str, perplexity: float, seed: int, steps: Steps,
            partial: Callable[[np.ndarray], None] | None) -> tuple[np.ndarray, dict[str, Any]]:
    """N×C vectors → N×2 points with ``method``, and the options it used."""
    x = vectors.numpy().astype(np.float32, copy=False)
    n = len(x)
    if n < 3:
        raise ValueError(f"data: {n} image(s); an embedding needs at least 3.")
    if method == "pca":
        from sklearn.decomposition import PCA

        points = np.zeros((n, 2), dtype=np.float32)
        parts = min(2, x.shape[1])
        points[:, :parts] = PCA(parts, svd_solver="full").fit_transform(x)
        steps.advance()
        return points, {}
    if method == "umap":
        reducer = _umap().UMAP(n_components=2, n_neighbors=min(15, n - 1), random_state=seed)
        points = reducer.fit_transform(x)
        steps.advance()
        return points, {"n_neighbors": min(15, n - 1), "seed": seed}
    from openTSNE import TSNE

    used = min(perplexity, (n - 1) / 3)  # as scikit-learn: about 3 perplexities of neighbours must exist
    if not np.ptp(x, axis=0).any():  # every image has the same vector: one point (t-SNE's affinities are NaN)
        steps.advance(TSNE_ITERATIONS // TSNE_CALLBACK_EVERY)
        return np.zeros((n, 2), dtype=np.float32), {"perplexity": used, "seed": seed}

    def callback(_iteration: int, _error: float, embedding: np.ndarray) -> bool:
        steps.advance()
        if partial is not None:
            partial(np.array(embedding))
        return False

    tsne = TSNE(perplexity=used, n_jobs=torch.get_num_threads(), random_state=seed, callbacks=callback,
                callbacks_every_iters=TSNE_CALLBACK_EVERY, verbose=False)
    points = np.array(tsne.fit(x))
    return points, {"perplexity": used, "seed": seed}


def _umap():
    try:
        import umap
    except ImportError:
        raise ImportError("method='umap' needs umap-learn: pip install umap-learn "
                          "(or use method='tsne' or 'pca').") from None
    return umap


def _pool(output: torch.Tensor, spatial: bool) -> torch.Tensor:
    """One layer's output → B×C: spatial maps averaged over H×W; other shapes averaged over all but their last
    axis (tokens), trailing 1×1 axes dropped first."""
    x = output.detach()
    if spatial:
        return x.float().mean(dim=(-2, -1)).flatten(1)
    while x.dim() > 2 and x.shape[-1] == 1:
        x = x.squeeze(-1)
    if x.dim() > 2:
        x = x.float().mean(dim=tuple(range(1, x.dim() - 1)))
    return x.float().reshape(len(x), -1)


def _predicted(out: Any, selector: Any, n: int) -> torch.Tensor:
    """The model's top class per image, or −1 when its output is not B×K class scores."""
    try:
        logits = select_output(out, selector)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError):
        return torch.full((n,), -1, dtype=torch.long)
    if isinstance(logits, torch.Tensor) and logits.dim() > 2 and all(s == 1 for s in logits.shape[2:]):
        logits = logits.flatten(1)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or len(logits) != n:
        return torch.full((n,), -1, dtype=torch.long)
    return logits.argmax(1).cpu()


def _weights_version(model: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer is replaced or changed in place (an optimizer step, a load)."""
    model = unwrap(model)
    return tuple((id(t), t._version) for t in (*model.parameters(), *model.buffers()))


def _spread(total: int, n: int) -> list[int]:
    """``n`` distinct positions spread evenly over ``range(total)`` (sorted data keeps every class)."""
    return sorted({int(round(i * (total - 1) / max(n - 1, 1))) for i in range(n)})


def _first_image(data: Any) -> Any:
    source = data.dataset if isinstance(data, torch.utils.data.DataLoader) else data
    if isinstance(source, (torch.Tensor, np.ndarray)) and source.ndim == 4:
        return source[0]
    try:
        return split_item(source[0])[0]
    except (TypeError, IndexError, KeyError):
        return split_item(next(iter(batches(data))).images[0])[0]

