"""Embeddings on the default model: how well the 2-D layout keeps the classes apart, and what it costs.

    flock /tmp/cnnlens-heavy.lock .venv/bin/python bench/embed.py   # writes bench/embed.md

The data are held-out images of the shapes generator (``cl.zoo.shapes(n)``: seed 0, never seen in training;
image i depends only on (seed, i), so 20k images are the first 2k plus more). For each size, one pass reads
the pooled vectors of every layer on the view's depth slider (timed against plain forwards over the same
batches), then each layout is timed on its own. Separation is the cross-validated 10-NN accuracy of the 2-D
points on the labels (scikit-learn, 5 stratified folds), beside the model's own accuracy on the same images.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch

import cnnlens as cl
from cnnlens.core.data import batches
from cnnlens.widgets.embed_view import depth_layers

SIZES = (5_000, 20_000)
DEPTH_IMAGES = 2_000  # images for the per-layer separation table (the view's default)
THREADS = 2
ROUNDS = 3  # the pass and the plain forwards alternate, best of each (the machine is shared)


def forward_seconds(model: torch.nn.Module, data, n: int) -> float:
    """Plain eval forwards over the first ``n`` images in batches of 64 (reading included), no hooks."""
    start = time.perf_counter()
    with torch.no_grad():
        for batch in batches(data, 64, indices=range(n)):
            model(torch.stack(batch.images))
    return time.perf_counter() - start


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def pass_and_plain(model: torch.nn.Module, data, names: list[str], n: int) -> tuple[dict, float, float]:
    """The vectors of ``names`` for ``n`` images, the best time of a fresh Embedder's pass and of plain forwards."""
    passes, plains = [], []
    for _ in range(ROUNDS):
        vectors, seconds = timed(lambda: cl.Embedder(model, data, max_images=n).vectors(names))
        passes.append(seconds)
        plains.append(forward_seconds(model, data, n))
    return vectors, min(passes), min(plains)


def main() -> None:
    torch.set_num_threads(THREADS)
    model, data = cl.zoo.shapes(max(SIZES))
    names = [info.name for info in depth_layers(cl.layers(model))]
    lines = [f"Embeddings on the default model (`cl.zoo.shapes()`), {THREADS} threads "
             f"({platform.processor() or platform.machine()}, shared 2-core machine); openTSNE "
             f"{__import__('openTSNE').__version__}, scikit-learn {__import__('sklearn').__version__}.", ""]

    lines += ["## Separation: k-NN accuracy of the 2-D points vs the model's accuracy", "",
              "| images | layer | method | 10-NN accuracy (5-fold) | model accuracy |", "|---:|---|---|---:|---:|"]
    rows = ["", "## Time", "", "| images | step | seconds | note |", "|---:|---|---:|---|"]
    pass_and_plain(model, data, names, 256)  # warm up: first calls, the layer table, allocations
    for n in SIZES:
        vectors, seconds, plain = pass_and_plain(model, data, names, n)
        embedder = cl.Embedder(model, data, max_images=n)
        embedder.vectors(names)
        size = sum(v.numel() * 4 for v in vectors.values())
        rows.append(f"| {n:,} | one pass, {len(names)} layers pooled (best of {ROUNDS}) | {seconds:.1f} | "
                    f"{seconds / plain:.2f}× plain forwards ({plain:.1f} s, best of {ROUNDS}); vectors kept: "
                    f"{size / 2**20:.1f} MB |")
        for method in ("pca", "tsne"):
            result, seconds = timed(lambda embedder=embedder, method=method: embedder.embed("stage4", method=method))
            note = f"perplexity {result.params['perplexity']:.0f}" if method == "tsne" else "full SVD"
            rows.append(f"| {n:,} | {method} layout of stage4 | {seconds:.1f} | {note} |")
            known = result.labels >= 0
            accuracy = float((result.predictions[known] == result.labels[known]).float().mean())
            lines.append(f"| {n:,} | stage4 (last spatial, pooled) | {method} | {result.knn_accuracy():.3f} | "
                         f"{accuracy:.3f} |")
            print(lines[-1], rows[-1], flush=True)

    depth = cl.Embedder(model, data, max_images=DEPTH_IMAGES)
    depth.vectors(names)
    lines += ["", f"## Separation with depth ({DEPTH_IMAGES:,} images, t-SNE, the view's slider)", "",
              "| layer | 10-NN accuracy |", "|---|---:|"]
    for name in names:
        lines.append(f"| {name} | {depth.embed(name).knn_accuracy():.3f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines + rows) + "\n"
    (Path(__file__).parent / "embed.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
