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
PRESETS = ("raw", "keras", "yosinski", "lucid-published", "lucid")
STARTS = 4
SEEDS = (0, 1, 2)


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
             f"{len(CLASSES)} classes × {STARTS} starts per preset and seed, "
             f"default settings, seeds {', '.join(map(str, SEEDS))}.", "",
             "| preset | steps | the default model's confidence (median) "
             "| second model: intended class (per seed) | time per seed (s) |",
             "|---|---:|---:|---:|---:|"]
    for preset in PRESETS:
        start = time.perf_counter()
        results = [cl.visualize(model, list(range(len(CLASSES))), preset=preset, starts=STARTS, seed=seed)
                   for seed in SEEDS]
        seconds = (time.perf_counter() - start) / len(SEEDS)
        intended = torch.arange(len(CLASSES)).repeat_interleave(STARTS)
        with torch.no_grad():
            agreed = [float((other(r.images).argmax(1) == intended).float().mean()) for r in results]
        confidence = torch.cat([r.confidence for r in results]).median()
        lines.append(f"| {preset} | {results[0].params['steps']} | {float(confidence):.1%} | "
                     f"{sum(agreed) / len(agreed):.0%} ({', '.join(f'{a:.0%}' for a in agreed)}) | {seconds:.0f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    (Path(__file__).parent / "recognizability.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
