"""``cnnlens gallery``: every local explanation on default-model images, and a page of synthesized images."""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import zoo
from .core.display import colorize, label_colors, overlay, to_uint8
from .explain import METHODS

SCALE = 3  # 64-pixel images are shown 3× larger, pixelated


def _save(array: np.ndarray, path: Path) -> str:
    image = Image.fromarray(array)
    image = image.resize((image.width * SCALE, image.height * SCALE), Image.NEAREST)
    image.save(path)
    return path.name


def _label_image(labels: torch.Tensor, n: int) -> np.ndarray:
    return label_colors(n)[labels.cpu().numpy()]


def render_gallery(out: Path, images: int = 4, log: Callable[[str], None] = print) -> Path:
    """Render all methods on ``images`` held-out images into ``out``; returns the index.html path."""
    if images <= 0:
        raise ValueError(f"images must be ≥ 1, got {images}.")
    out.mkdir(parents=True, exist_ok=True)
    model, data = zoo.shapes(max(images, 8))
    picks = _pick_examples(data, images)
    rows = []
    for i in picks:
        image, label, _mask = data[i]
        cells = [("input", _save(to_uint8(image), out / f"img{i}_input.png"), f"label: {data.classes[label]}")]
        for name, info in METHODS.items():
            log(f"image {i}: {name}")
            # each method with its view's control defaults (LIME hides superpixels with gray there: see the
            # registry), so the gallery draws what the Lens shows first
            options = {control.name: control.default for control in info.controls}
            options.update({"seed": 0} if info.seeded else {})
            target = _strongest_unit(model, image) if name == "deconvnet" else None
            result = info.function(model, image, target, **options)
            top = result.predictions[0] if result.predictions else None  # a feature-map target stops early
            caption = f"{info.label} · {result.target}" + (f" · top: {top.name} {top.prob:.0%}" if top else "")
            heat = overlay(image, result.map, cmap="RdBu_r" if info.signed else "magma", signed=info.signed)
            cells.append((info.label, _save(heat, out / f"img{i}_{name}.png"), caption))
            if name == "occlusion":
                cells.append(("occlusion: unit map", _save(colorize(result.unit_map, "viridis"),
                                                            out / f"img{i}_occlusion_unit.png"),
                              f"total activation of {result.params['unit_layer']}:{int(result.unit)}"))
                legend = ", ".join(sorted({data.classes[int(c)] for c in result.label_map.unique()}))
                cells.append(("occlusion: label map", _save(_label_image(result.label_map, len(data.classes)),
                                                             out / f"img{i}_occlusion_label.png"),
                              f"most probable label; labels seen: {legend}"))
        rows.append(cells)
    index = out / "index.html"
    index.write_text(
        _page("cnnlens gallery: the embedded default model",
              "Every local explanation method on held-out images of the procedural shapes data. "
              '<a href="synthesis.html">What units and classes want to see →</a>', rows),
        encoding="utf-8",
    )
    _synthesis_page(out, model, data.classes, log)
    return index


def _page(title: str, intro: str, rows: list[list[tuple[str, str, str]]]) -> str:
    body = []
    for cells in rows:
        figures = "".join(
            f'<figure><img src="{html.escape(src)}" alt="{html.escape(name)}"><figcaption><b>{html.escape(name)}'
            f"</b><br>{html.escape(caption)}</figcaption></figure>" for name, src, caption in cells
        )
        body.append(f'<div class="row">{figures}</div>')
    return ("<!doctype html><meta charset=utf-8><title>" + html.escape(title) + "</title>"
            "<style>body{font-family:sans-serif;margin:1em}.row{display:flex;flex-wrap:wrap;gap:8px;"
            "margin-bottom:1.5em}figure{margin:0;width:200px}figure img{width:192px;image-rendering:pixelated}"
            "figcaption{font-size:11px}</style>"
            f"<h1>{html.escape(title)}</h1><p>{intro}</p>" + "".join(body))


def _synthesis_page(out: Path, model, classes: tuple[str, ...], log: Callable[[str], None]) -> Path:
    """Class visualizations (lucid), fooling images (raw) and the last stage's units, on synthesis.html."""
    from .synthesize import visualize

    rows = []
    for preset, what in (("lucid", "class visualization"), ("raw", "fooling image")):
        log(f"synthesis: {what}s ({preset})")  # each preset's own steps: at half of lucid's, square stalls at 15%
        result = visualize(model, list(range(len(classes))), preset=preset, seed=0)
        rows.append([(f"{classes[c]} · {preset}", _save(to_uint8(result.images[c]), out / f"synth_{preset}_{c}.png"),
                      f"{what}; the model says {classes[c]} with {float(result.confidence[c]):.1%}")
                     for c in range(len(classes))])
    log("synthesis: stage4 units")
    units = visualize(model, [f"stage4:{u}" for u in range(8)], steps=256, seed=0)
    rows.append([(f"stage4:{u}", _save(to_uint8(units.images[u]), out / f"synth_unit_{u}.png"),
                  f"mean activation {float(units.history[-1, u]):.2f}") for u in range(8)])
    page = out / "synthesis.html"
    page.write_text(_page("cnnlens gallery: what units and classes want to see",
                          "Activation maximization on the default model (cnnlens.visualize, seed 0): Lucid-style "
                          "class visualizations, raw gradient ascent (Nguyen et al.'s fooling images: near-certain "
                          'and unrecognizable) and the last stage\'s units. <a href="index.html">← explanations</a>',
                          rows), encoding="utf-8")
    return page


def _pick_examples(data, n: int) -> list[int]:
    """Prefer a mix of images with and without a distractor shape."""
    with_distractor = [i for i in range(len(data)) if data.distractors[i] >= 0]
    without = [i for i in range(len(data)) if data.distractors[i] < 0]
    picks = [v for pair in zip(without, with_distractor) for v in pair]
    return picks[:n]


def _strongest_unit(model, image: torch.Tensor) -> str:
    """'layer:unit' of the most active feature map of the last stage, for the DeconvNet projection."""
    from .core.hooks import capture
    from .core.session import look

    with look(model) as s, torch.no_grad(), capture(s.net, ["stage4"]) as cap:
        s.logits(image[None])
        unit = int(cap["stage4"][0].flatten(1).amax(1).argmax())
    return f"stage4:{unit}"
