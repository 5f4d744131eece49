"""Whether to trust each attribution method on the default model (issue 8, section 6): a README table.

    .venv/bin/python bench/trust.py    # table to stdout and bench/trust.md

For every method in ``cl.METHODS`` with its registry defaults, on held-out
images of the shapes data (target: the predicted class):

- pointing game: how often the map's maximum lies on the object (its mask
  grown by 1 px); mask overlap: the mean fraction of the map's positive mass
  on the object;
- deletion area (lower is better; pixels set to black) and insertion area
  (higher is better; pixels copied into a blurred copy), 64 steps, Petsiuk et
  al. 2018;
- the cascading randomization check of Adebayo et al. 2018: the verdict and
  the mean |Spearman| of the absolute maps over the cascade (the number the
  verdict reads; threshold 0.5), and the |Spearman| with every layer random.

The slow methods (occlusion, LIME, SmoothGrad, Integrated Gradients) run the
randomization check on fewer images (the table says how many).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

import cnnlens as cl
from cnnlens.dataset.metrics import importance

IMAGES = 64  # images for pointing game, overlap, deletion and insertion
SANITY_IMAGES = 16  # images for the randomization check of the fast methods
SLOW = {"occlusion": 8, "lime": 4, "smoothgrad": 8, "integrated_gradients": 8}  # fewer for the slow ones
OUT = Path(__file__).with_suffix(".md")


def options(info: cl.explain.registry.MethodInfo) -> dict:
    kwargs = {c.name: c.default for c in info.controls}
    if info.seeded:
        kwargs["seed"] = 0
    return kwargs


def main() -> None:
    torch.set_num_threads(2)
    model, data = cl.zoo.shapes()
    images = torch.stack([data[i][0] for i in range(IMAGES)])
    masks = torch.stack([data[i][2] for i in range(IMAGES)])
    rows = ["| method | pointing game | mask overlap | deletion area ↓ | insertion area ↑ "
            "| randomization check | mean \\|ρ\\| (final) | images checked | time (s) |",
            "|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    for name, info in cl.METHODS.items():
        start = time.perf_counter()
        maps = importance(info.function(model, images, None, **options(info)))  # occlusion: its drop_map
        hits = cl.pointing_game(maps, masks)
        overlap = cl.mask_overlap(maps, masks)
        deletion = cl.deletion(model, images, maps, steps=64)
        insertion = cl.insertion(model, images, maps, steps=64)
        n = SLOW.get(name, SANITY_IMAGES)
        check = cl.sanity_check(model, images[:n], name, **{k: v for k, v in options(info).items() if k != "seed"})
        seconds = time.perf_counter() - start
        verdict = "passes" if check.passes else "**fails**"
        final = abs(float(check.spearman_abs[-1]))
        row = (f"| {info.label} | {hits.float().mean():.0%} | {overlap.mean():.2f} | {deletion.auc.mean():.3f} "
               f"| {insertion.auc.mean():.3f} | {verdict} | {check.score:.2f} ({final:.2f}) "
               f"| {IMAGES} / {n} | {seconds:.0f} |")
        print(row, flush=True)
        rows.append(row)
    noise = torch.rand(IMAGES, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    smooth = torch.nn.functional.interpolate(noise, size=images.shape[-2:], mode="bilinear")[:, 0]
    deletion = cl.deletion(model, images, smooth, steps=64)
    insertion = cl.insertion(model, images, smooth, steps=64)
    rows.append(f"| *random smooth map (reference)* | {cl.pointing_game(smooth, masks).float().mean():.0%} "
                f"| {cl.mask_overlap(smooth, masks).mean():.2f} | {deletion.auc.mean():.3f} "
                f"| {insertion.auc.mean():.3f} | — | — | {IMAGES} / — | |")
    print(rows[-1])
    text = "\n".join([
        f"Default model (`cl.zoo.shapes()`), first {IMAGES} held-out images, target = predicted class, each "
        "method with its registry defaults. Pointing game: the map's maximum on the object (mask grown by 1 px). "
        "Mask overlap: the map's positive mass on the object. Deletion/insertion: Petsiuk et al. 2018, 64 steps, "
        "black baseline / Gaussian blur σ = 5. Randomization check: Adebayo et al. 2018, cascading from `fc` down "
        f"to `stage1.conv1` (13 layers with parameters), passes when the mean |Spearman| of the absolute maps "
        "over the cascade is below 0.5; in brackets the |Spearman| with every layer random. "
        "'images checked': images for the metrics / for the randomization check. The last row scores random "
        "maps as smooth as a saliency map (8×8 uniform noise, upsampled): the chance level of each number. "
        f"Measured by bench/trust.py on 2 CPU threads ({time.strftime('%Y-%m-%d')}).", "", *rows, ""])
    OUT.write_text(text)


if __name__ == "__main__":
    main()
