"""The Occlusion view's default job on a random resnet18 (2-core CPU): time to the first map and to the last.

    .venv/bin/python bench/occlusion_view.py     # prints a markdown table (also saved to bench/occlusion_view.md)

For each image size the view is built as a notebook would (its defaults are sized by one timed forward),
then the time from the job's start to the first drawn map (a coarse pass) and to the final map is read
from the probability panel's result count.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torchvision

from cnnlens.widgets import OcclusionView

SIZES = (64, 224, 512, 1024)


def measure(side: int) -> dict:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    image = torch.rand(3, side, side)
    stamps: list[float] = []
    built = time.perf_counter()
    view = OcclusionView(model, image)
    view.prob_panel.observe(lambda _: stamps.append(time.perf_counter()), "results")
    start = time.perf_counter()
    view.wait(600)
    end = time.perf_counter()
    row = {"side": side, "mask": view.mask_size.value, "stride": view.stride.value,
           "build_s": start - built, "first_s": (stamps[0] - built) if stamps else float("nan"),
           "done_s": end - built, "maps": len(stamps)}
    view.close()
    return row


def main() -> None:
    torch.set_num_threads(2)
    lines = ["| image | mask / stride | view built (s) | first map (s) | final map (s) | maps drawn |",
             "|---:|---|---:|---:|---:|---:|"]
    for side in SIZES:
        r = measure(side)
        lines.append(f"| {side} px | {r['mask']} / {r['stride']} | {r['build_s']:.1f} | {r['first_s']:.1f} | "
                     f"{r['done_s']:.1f} | {r['maps']} |")
        print(lines[-1], flush=True)
    text = "Occlusion view, random resnet18, default controls, 2 threads; times from the view's construction.\n\n"
    text += "\n".join(lines) + "\n"
    (Path(__file__).parent / "occlusion_view.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
