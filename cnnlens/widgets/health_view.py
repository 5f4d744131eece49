"""Filter health view: a layer's filters as a grid of tiles, dead units and suspicious pairs framed in colour.

Each tile is one unit's kernel: RGB for a layer that reads an image
(0.5 + 0.5·w / max|w|, so an opposite-phase twin shows inverted colours),
otherwise the kernel averaged over its input channels in red (+) and blue
(−). A coloured frame marks each finding (up to two frames per tile; the
caption under the tile lists every one by letter), the list below names the
pairs with their similarity, and clicking a tile says what was found for it.
Activity on the images (for dead units) is measured once per layer and kept;
moving a threshold only compares kernels again.
"""

from __future__ import annotations

import html
import math
from typing import Any

import ipywidgets as W
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from ..core.session import look
from ..dataset.health import HealthReport, conv_layers, filter_health
from .base import Images, View
from .panel import Panel

# kind → (frame colour, caption letter, words in the list)
MARKS = {
    "dead": ((0.12, 0.12, 0.12), "X", "dead"),
    "duplicates": ((1.0, 0.45, 0.0), "D", "duplicate"),
    "rotated": ((0.0, 0.66, 0.3), "R", "rotated copy"),
    "opposite": ((0.75, 0.0, 0.9), "O", "opposite phase"),
}
FRAME = 3  # px per frame ring
CAPTION = 12  # px of caption strip under each tile
LISTED = 40  # pairs of each kind listed below the grid
MAX_IMAGES = 256  # images the view reads for dead units (the first ones)
MIN_SIZE, MAX_SIZE = 480, 800  # px: the grid's longer side on screen


def kernel_image(weight: torch.Tensor) -> torch.Tensor:
    """N×3×h×w display images of a layer's kernels (see the module doc)."""
    w = weight.detach().float().cpu()
    if w.shape[1] in (1, 3):
        rgb = w.expand(-1, 3, -1, -1) if w.shape[1] == 1 else w
        scale = rgb.abs().amax((1, 2, 3), keepdim=True).clamp(min=1e-12)
        return (0.5 + 0.5 * rgb / scale).clamp(0, 1)
    mean = w.mean(1)
    v = mean / mean.abs().amax((1, 2), keepdim=True).clamp(min=1e-12)
    pos, neg = v.clamp(min=0), (-v).clamp(min=0)
    return torch.stack([1 - neg, 1 - pos - neg, 1 - pos], 1).clamp(0, 1)


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=10)
    except TypeError:  # Pillow < 10.1: the bitmap font
        return ImageFont.load_default()


def tiles(weight: torch.Tensor, report: HealthReport, layer: str) -> tuple[torch.Tensor, list[str], list[int]]:
    """Framed, captioned N×3×H×W tiles of ``layer``'s kernels, one hover line per unit, and the box of a tile
    that holds the kernel ([top, left, height, width]: what the zoom enlarges, without frame or caption)."""
    images = kernel_image(weight)
    k = max(images.shape[-2:])
    scale = max(2, round(32 / k))
    inner = F.interpolate(images, scale_factor=scale, mode="nearest")
    h, w = inner.shape[-2:]
    pad = 2 * FRAME
    found = report.findings(layer)
    font = _font()
    out, names = [], []
    for unit in range(len(images)):
        tile = np.ones((h + 2 * pad + CAPTION, w + 2 * pad, 3), dtype=np.float32)
        kinds = list(dict.fromkeys(kind for kind, *_ in found.get(unit, [])))
        bottom, right = tile.shape[0] - CAPTION, tile.shape[1]
        for depth, kind in enumerate(kinds[:2]):  # one coloured ring per finding, outermost first
            o, i = depth * FRAME, (depth + 1) * FRAME
            tile[o:bottom - o, o:right - o] = MARKS[kind][0]
            tile[i:bottom - i, i:right - i] = 1.0
        if not kinds:  # a thin gray outline keeps the grid readable
            tile[pad - 1:bottom - pad + 1, pad - 1:right - pad + 1] = 0.8
        tile[pad:pad + h, pad:pad + w] = inner[unit].permute(1, 2, 0).numpy()
        canvas = Image.fromarray((tile * 255).round().astype(np.uint8))
        draw = ImageDraw.Draw(canvas)
        x = 1
        for text, color in [(str(unit), (40, 40, 40))] + [(MARKS[kind][1], tuple(int(c * 255) for c in MARKS[kind][0]))
                                                            for kind in kinds]:
            draw.text((x, h + 2 * pad), text, fill=color, font=font)
            x += int(draw.textlength(text, font=font)) + 2
        out.append(torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255).permute(2, 0, 1))
        names.append(describe(unit, found.get(unit, [])))
    return torch.stack(out), names, [pad, pad, h, w]


def grid_size(images: torch.Tensor) -> int:
    """Display size (px of the longer side) for a grid of these tiles: about 1.2 screen px per tile px."""
    count, _, h, w = images.shape
    cols = math.ceil(math.sqrt(count))
    side = max(cols * (w + 1), math.ceil(count / cols) * (h + 1))
    return int(min(MAX_SIZE, max(MIN_SIZE, 1.2 * side)))


def describe(unit: int, findings: list) -> str:
    """One line for a unit: what was found, with partners and similarities."""
    if not findings:
        return f"unit {unit}: nothing found"
    parts = []
    for kind, other, similarity, transform in findings:
        if kind == "dead":
            parts.append("dead")
        else:
            how = f" ({transform})" if kind == "rotated" else ""
            parts.append(f"{MARKS[kind][2]}{how} of {other}: {similarity:+.3f}")
    return f"unit {unit}: " + "; ".join(parts)


def findings_html(report: HealthReport, layer: str) -> str:
    """The legend and the list of findings of ``layer`` (every text escaped)."""
    def swatch(kind: str) -> str:
        r, g, b = (int(c * 255) for c in MARKS[kind][0])
        return (f'<span style="display:inline-block;width:10px;height:10px;margin:0 4px 0 10px;'
                f'border:2px solid rgb({r},{g},{b})"></span>')

    dead = [u for name, u in report.dead if name == layer]
    pairs = {kind: [p for p in getattr(report, kind) if p.a[0] == layer] for kind in ("duplicates", "rotated",
                                                                                        "opposite")}
    counts = {"dead": len(dead), **{k: len(v) for k, v in pairs.items()}}
    legend = "".join(f"{swatch(kind)}{html.escape(MARKS[kind][1])} {html.escape(MARKS[kind][2])} "
                     f"({counts[kind]})" for kind in MARKS)
    t = report.thresholds
    where = report.measured_at.get(layer)
    lines = [f"<b>{html.escape(layer)}</b>: {report.units[layer]} units · "
             + (f"activity on {report.images} images at {html.escape(where)}" if report.activity_checked and where
                else "activity not checked (no images): only zero kernels count as dead")
             + f" · duplicate ≥ {t['duplicate']:g}, rotated ≥ {t['rotated']:g}, opposite ≤ −{t['opposite']:g}",
             legend]
    if dead:
        lines.append(f"{swatch('dead')}dead: {html.escape(', '.join(map(str, dead)))}")
    for kind, found in pairs.items():
        if not found:
            continue
        shown = ", ".join(f"{p.a[1]}~{p.b[1]} {p.similarity:+.3f}" + (f" {p.transform}" if kind == "rotated" else "")
                          for p in found[:LISTED])
        more = f" … and {len(found) - LISTED} more" if len(found) > LISTED else ""
        lines.append(f"{swatch(kind)}{html.escape(MARKS[kind][2])}: {html.escape(shown + more)}")
    if not any(counts.values()):
        lines.append("no dead units and no pairs above the thresholds")
    return '<div class="cl-health-findings" style="font-size:12px;line-height:1.6">' + "<br>".join(lines) + "</div>"


def _slider(value: float, description: str, tooltip: str) -> W.FloatSlider:
    return W.FloatSlider(value=value, min=0.5, max=1.0, step=0.01, description=description, tooltip=tooltip,
                         continuous_update=False, readout_format=".2f", style={"description_width": "initial"})


class FilterHealthView(View):
    """Layer and thresholds → the layer's filters with dead units and duplicate/rotated/opposite pairs marked.

    ``images`` (optional) are read for dead units (the first ``max_images``); ``layer`` is the conv shown
    first (default: the first convolution). The view does not follow the image picker (``index``).
    """

    def __init__(self, model: torch.nn.Module, images: Any = None, index: W.IntSlider | None = None, *,
                 layer: str | None = None, duplicate: float = 0.95, rotated: float = 0.95, opposite: float = 0.9,
                 max_images: int = MAX_IMAGES):
        with look(model) as session:
            names = conv_layers(session)
        if not names:
            raise ValueError(f"model: {type(model).__name__} has no Conv2d layer; the filter health view shows "
                             "convolution kernels.")
        if layer is not None and layer not in names:
            raise ValueError(f"Unknown layer {layer!r}. Conv2d layers: {', '.join(names)}.")
        self.data = None
        if images is not None:
            images = images if isinstance(images, Images) else Images(images, model)
            source = images.source
            self.data = source if len(source) <= max_images else torch.utils.data.Subset(source, range(max_images))
        else:
            images = Images(torch.full((3, 8, 8), 0.5), model)  # a placeholder: the view reads no image
        self.layer = W.Dropdown(options=names, value=layer or names[0], description="layer")
        self.duplicate = _slider(duplicate, "duplicate ≥", "cosine similarity of two kernels")
        self.rotated = _slider(rotated, "rotated ≥", "cosine similarity after a rotation or mirror")
        self.opposite = _slider(opposite, "opposite ≤ −", "negative cosine similarity (opposite phase)")
        self.grid = Panel("grid", "filters", size=MIN_SIZE, normalize=False, zoomable=True)
        self.findings = W.HTML("")
        self.unit_info = W.HTML("")
        self.report: HealthReport | None = None  # the report drawn last
        self._activity: dict[str, tuple[list, torch.Tensor, str, int]] = {}  # layer → (dead, peak, where, images)
        self._names: list[str] = []
        super().__init__(model, images, [self.grid], [self.layer, self.duplicate, self.rotated, self.opposite], index)
        self.children = (*self.children, self.unit_info, self.findings)
        if self._own_index:  # the view reads every image, not the picked one
            self.index.layout.display = "none"
        for widget in (self.layer, self.duplicate, self.rotated, self.opposite):
            self.watch(widget, lambda change: None if self.quiet(change) else self.refresh())
        self.watch(self.grid, lambda change: self._show_unit(), "selected")
        self.refresh()

    def image_changed(self) -> None:
        """Filter health reads the weights and all the images, not the picked one: nothing to redo."""

    def refresh(self) -> None:
        self._check_open()
        model, data, layer = self.model, self.data, self.layer.value
        thresholds = {"duplicate": self.duplicate.value, "rotated": self.rotated.value,
                      "opposite": self.opposite.value}
        known = dict(self._activity)

        def compute(progress, cancel, partial):
            measure = data is not None and layer not in known
            report = filter_health(model, data if measure else None, layer, progress=progress, cancel=cancel,
                                   **thresholds)
            if measure:
                for name in report.layers:
                    known[name] = ([u for u in report.dead if u[0] == name], report.peak.get(name),
                                   report.measured_at[name], report.images)
            elif data is not None:
                _merge(report, known)
            with look(model) as session:
                weight = session.module(layer).weight.detach().cpu()
            return report, known, tiles(weight, report, layer)

        def publish(outcome):
            report, activity, (images, names, kernel_box) = outcome
            self.report, self._activity, self._names = report, activity, names
            dead = sum(1 for name, _ in report.dead if name == layer)
            pairs = ", ".join(f"{kind.removesuffix('s')} {sum(1 for p in getattr(report, kind) if p.a[0] == layer)}"
                              for kind in ("duplicates", "rotated", "opposite"))
            self.grid.tile_names = names
            self.grid.zoom_box = kernel_box
            self.grid.size = grid_size(images)
            self.grid.show_grid(images, title=f"{layer} · {report.units[layer]} filters · {dead} dead · "
                                              f"pairs: {pairs}")
            self.findings.value = findings_html(report, layer)
            self._show_unit()

        self.runner.submit(compute, publish)

    def _show_unit(self) -> None:
        unit = self.grid.selected
        text = self._names[unit] if 0 <= unit < len(self._names) else "click a filter to see what was found for it"
        self.unit_info.value = f'<div style="font-size:12px">{html.escape(text)}</div>'


def _merge(report: HealthReport, activity: dict[str, tuple[list, torch.Tensor, str, int]]) -> None:
    """Put the activity measured earlier (dead units, peaks) into a report computed from the kernels alone."""
    dead = set(report.dead)
    for name in report.layers:
        if name in activity:
            units, peak, where, images = activity[name]
            dead |= set(units)
            report.peak[name] = peak
            report.measured_at[name] = where
            report.images = images
    order = {name: i for i, name in enumerate(report.layers)}
    report.dead = sorted(dead, key=lambda u: (order[u[0]], u[1]))
    report.notes = [note for note in report.notes if not note.startswith("no data given")]
