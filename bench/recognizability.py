"""Do class visualizations look like their class to another model? (issue 7, section 6)

    .venv/bin/python bench/recognizability.py    # table to stdout and bench/recognizability.md

A second copy of the default architecture is trained with another seed (once;
its weights are cached in bench/.cache/, not committed). The default model's
class visualizations — every class, several starts, default settings of each
preset — are then classified by the second model: the fraction it assigns to
the intended class says whether the images carry the class's shape rather than
one model's idiosyncrasies (fooling images should not transfer).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

import cnnlens as cl
from cnnlens.zoo import CLASSES, ShapesNet
from cnnlens.zoo.train import train_default

CACHE = Path(__file__).parent / ".cache" / "shapesnet_seed1.pt"
PRESETS = ("raw", "keras", "yosinski", "lucid")
STARTS = 4


def judge() -> torch.nn.Module:
    if not CACHE.is_file():
        train_default(CACHE, epochs=6, seed=1)
    other = ShapesNet()
    other.load_state_dict(torch.load(CACHE, weights_only=True))
    return other.eval()


def main() -> None:
    torch.set_num_threads(2)
    model, data = cl.zoo.shapes()
    other = judge()
    with torch.no_grad():
        accuracy = float((other(data.images).argmax(1) == data.labels).float().mean())
    lines = [f"Second model (seed 1, 6 epochs): held-out accuracy {accuracy:.1%}. "
             f"{len(CLASSES)} classes × {STARTS} starts per preset, default settings, seed 0.", "",
             "| preset | steps | the default model's confidence (median) | second model: intended class | time (s) |",
             "|---|---:|---:|---:|---:|"]
    for preset in PRESETS:
        start = time.perf_counter()
        result = cl.visualize(model, list(range(len(CLASSES))), preset=preset, starts=STARTS, seed=0)
        seconds = time.perf_counter() - start
        intended = torch.arange(len(CLASSES)).repeat_interleave(STARTS)
        with torch.no_grad():
            agreed = float((other(result.images).argmax(1) == intended).float().mean())
        lines.append(f"| {preset} | {result.params['steps']} | {float(result.confidence.median()):.1%} | "
                     f"{agreed:.0%} | {seconds:.0f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    (Path(__file__).parent / "recognizability.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
