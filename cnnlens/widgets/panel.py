"""Panel: the one anywidget that draws images, heatmaps, label maps, tile grids and bar charts.

Everything visual travels as binary: RGB images as raw uint8 bytes, maps as
float32 bytes, so the browser applies colormap, opacity, signed display and
hover values itself. Images larger than ``max_side`` are downsampled for
transport. Text (titles, class names, errors) is rendered as text.
"""

from __future__ import annotations

from pathlib import Path

import anywidget
import numpy as np
import torch
import torch.nn.functional as F
import traitlets

from ..core.display import label_colors, to_uint8

STATIC = Path(__file__).parent.parent / "static"
KINDS = ("heatmap", "image", "labels", "grid", "bars", "scatter")


def _bundle(name: str) -> Path:
    path = STATIC / name
    if not path.is_file():
        raise RuntimeError(f"The cnnlens front end is not built ({path} is missing): reinstall the package "
                           "(pip install -e .) or run `npm ci && npm run build` in js/.")
    return path


def _fit(t: torch.Tensor, max_side: int, mode: str = "area") -> torch.Tensor:
    """Downsample a (…, H, W) tensor so its longer side is at most ``max_side``."""
    h, w = t.shape[-2:]
    if max(h, w) <= max_side:
        return t
    scale = max_side / max(h, w)
    size = (max(int(h * scale), 1), max(int(w * scale), 1))
    lead = t.shape[:-2]
    flat = t.reshape(-1, 1, h, w).float()
    out = F.interpolate(flat, size=size, mode="nearest" if mode == "nearest" else "area")
    return out.reshape(*lead, *size)


class Panel(anywidget.AnyWidget):
    """One drawing surface; ``kind`` selects how the data is drawn."""

    _esm = _bundle("widget.js")
    _css = _bundle("widget.css")

    kind = traitlets.Unicode("heatmap").tag(sync=True)
    title = traitlets.Unicode("").tag(sync=True)
    shape = traitlets.List(traitlets.Int(), default_value=[0, 0]).tag(sync=True)
    image = traitlets.Bytes(b"").tag(sync=True)
    heat = traitlets.Bytes(b"").tag(sync=True)
    cmap = traitlets.Unicode("magma").tag(sync=True)
    cmap_index = traitlets.Int(-1).tag(sync=True)  # ≥ 0: COLORMAPS[cmap_index] overrides cmap (linked controls)
    opacity = traitlets.Float(0.6).tag(sync=True)
    signed = traitlets.Bool(False).tag(sync=True)
    vmax = traitlets.Float(0.0).tag(sync=True)
    rect = traitlets.List(traitlets.Int(), default_value=[]).tag(sync=True)
    legend = traitlets.List(default_value=[]).tag(sync=True)
    bars = traitlets.List(default_value=[]).tag(sync=True)
    selected = traitlets.Int(-1).tag(sync=True)
    columns = traitlets.Int(0).tag(sync=True)  # grid columns; 0: about square
    zoomable = traitlets.Bool(True).tag(sync=True)  # a grid shows the clicked tile enlarged below it
    zoom_box = traitlets.List(traitlets.Int(), default_value=[]).tag(sync=True)  # [top, left, h, w] of a tile to
    # enlarge (empty: all of it), so that a frame or a caption drawn into the tile is not blown up with it
    tile_names = traitlets.List(traitlets.Unicode(), default_value=[]).tag(sync=True)  # grid hover text per tile
    captions = traitlets.List(traitlets.Unicode(), default_value=[]).tag(sync=True)  # grid text under each tile
    normalize = traitlets.Bool(True).tag(sync=True)  # a grid scales each tile to its range (False: [0, 1] as is)
    size = traitlets.Int(256).tag(sync=True)
    points = traitlets.Bytes(b"").tag(sync=True)  # scatter: N×2 float32
    groups = traitlets.Bytes(b"").tag(sync=True)  # scatter: 3×N int32 (labels, predictions, image indices)
    color_by = traitlets.Int(0).tag(sync=True)  # scatter: 0 colours by label, 1 by prediction
    atlas = traitlets.Bytes(b"").tag(sync=True)  # scatter: N t×t RGB uint8 thumbnails, shown on hover
    atlas_shape = traitlets.List(traitlets.Int(), default_value=[0, 0]).tag(sync=True)  # scatter: [N, t]
    status = traitlets.Unicode("idle").tag(sync=True)
    progress = traitlets.Float(0.0).tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)
    details = traitlets.Unicode("").tag(sync=True)  # the error's full traceback, behind a "details" toggle
    compute_ms = traitlets.Float(0.0).tag(sync=True)  # how long the kernel computed the shown result
    results = traitlets.Int(0).tag(sync=True)  # how many results the kernel has published (a marker for tests)
    partial = traitlets.Bool(False).tag(sync=True)  # the shown result is a streamed partial; the final one follows

    def __init__(self, kind: str = "heatmap", title: str = "", max_side: int = 320, **kwargs):
        if kind not in KINDS:
            raise ValueError(f"Unknown panel kind {kind!r}. Valid: {', '.join(KINDS)}.")
        super().__init__(kind=kind, title=title, **kwargs)
        self.max_side = max_side
        self.next_compute_ms = 0.0  # set by the live runner; sent with the next result
        self.next_partial = False  # set by the live runner: whether the next result is a streamed partial
        self._stop_handlers: list = []
        self.attached = 0  # the browser's views of this panel on a page now (each says so when made and removed)
        self._attach_handlers: list = []
        self.on_msg(self._message)

    def _message(self, _widget, content, _buffers) -> None:
        kind = content.get("type") if isinstance(content, dict) else None
        if kind == "stop":
            for handler in list(self._stop_handlers):
                handler()
        elif kind in ("attached", "detached"):
            self.attached = self.attached + 1 if kind == "attached" else max(0, self.attached - 1)
            for handler in list(self._attach_handlers):
                handler(kind)

    def on_attach(self, handler) -> None:
        """Call ``handler("attached" | "detached")`` when a view of this panel is made or removed in the browser
        (a cell's output cleared removes them all; displaying the widget again makes new ones)."""
        self._attach_handlers.append(handler)

    def on_stop(self, handler) -> None:
        """Call ``handler()`` when the user presses this panel's Stop button."""
        self._stop_handlers.append(handler)

    def remove_stop(self, handler) -> None:
        """Forget a handler given to :meth:`on_stop`."""
        if handler in self._stop_handlers:
            self._stop_handlers.remove(handler)

    def close(self) -> None:
        self._stop_handlers = []
        self._attach_handlers = []
        super().close()

    # --- data ---------------------------------------------------------------------------------

    def show(self, image: torch.Tensor | None = None, heat: torch.Tensor | None = None, *, title: str | None = None,
             rect: list[int] | None = None, vmax: float | None = None) -> None:
        """Draw ``image`` (C×H×W in [0, 1]) and/or ``heat`` (H×W floats) in one message."""
        ref = image if image is not None else heat
        h, w = ref.shape[-2:]
        payload: dict = {}
        if image is not None:
            payload["image"] = to_uint8(_fit(image.detach().cpu(), self.max_side)).tobytes()
        else:
            payload["image"] = b""
        if heat is not None:
            mode = "nearest" if self.kind == "labels" else "area"
            fitted_heat = _fit(heat.detach().cpu().float(), self.max_side, mode)
            payload["heat"] = fitted_heat.numpy().astype(np.float32).tobytes()
        else:
            payload["heat"] = b""
        fitted = _fit(torch.zeros(1, h, w), self.max_side)
        scale = fitted.shape[-1] / w
        payload["shape"] = list(fitted.shape[-2:])
        payload["rect"] = [int(round(v * scale)) for v in rect] if rect else []
        if title is not None:
            payload["title"] = title
        if vmax is not None:
            payload["vmax"] = float(vmax)
        self._publish(payload)

    def show_labels(self, labels: torch.Tensor, names: list[str], title: str | None = None) -> None:
        """Draw a categorical map of indices into ``names``; the legend lists the labels present, each in its
        class's own colour (the same in every map and in the embedding's scatter, whatever else is present)."""
        present, compact = torch.unique(labels.long(), return_inverse=True)
        palette = label_colors(max(len(names), int(present.max()) + 1 if len(present) else 1))
        colors = palette[present.clamp(min=0).numpy()].tolist()
        self.legend = [[str(names[i]) if 0 <= i < len(names) else str(i), c] for i, c in zip(present.tolist(), colors)]
        self.show(None, compact.float(), title=title)

    def show_grid(self, tiles: torch.Tensor, title: str | None = None) -> None:
        """Draw N×h×w maps (or N×3×h×w RGB tiles), each scaled to its own range unless ``normalize`` is off
        (images in [0, 1] drawn as they are); click selects one (and zooms it when ``zoomable``)."""
        tiles = tiles.detach().cpu().float()
        rgb = tiles.dim() == 4
        payload = {"heat": tiles.numpy().astype(np.float32).tobytes(),
                   "shape": [tiles.shape[0], tiles.shape[-2], tiles.shape[-1], 3 if rgb else 1]}
        if self.selected >= tiles.shape[0]:
            payload["selected"] = -1
        if title is not None:
            payload["title"] = title
        self._publish(payload)

    def show_bars(self, bars: list[tuple[str, float]], title: str | None = None) -> None:
        """Draw named probabilities as horizontal bars."""
        payload = {"bars": [[str(n), float(p)] for n, p in bars]}
        if title is not None:
            payload["title"] = title
        self._publish(payload)

    def show_scatter(self, points: torch.Tensor, groups: torch.Tensor, names: list[str],
                     title: str | None = None) -> None:
        """Draw N×2 ``points`` coloured by class: ``groups`` is 3×N ints (labels, predictions — indices into
        ``names``, −1 unknown — and each point's image index); ``color_by`` picks the row that colours."""
        colors = label_colors(max(len(names), 1)).tolist()
        payload = {"points": points.detach().cpu().float().numpy().astype(np.float32).tobytes(),
                   "groups": groups.cpu().numpy().astype(np.int32).tobytes(),
                   "legend": [[str(name), c] for name, c in zip(names, colors)]}
        if title is not None:
            payload["title"] = title
        self._publish(payload)

    def _publish(self, payload: dict) -> None:
        with self.hold_sync():
            for key, value in payload.items():
                setattr(self, key, value)
            self.compute_ms = self.next_compute_ms
            self.partial = self.next_partial
            self.results += 1
            if self.error:
                self.error = ""
            if self.details:
                self.details = ""
            if self.status == "error":
                self.status = "idle"

    def download(self, data: bytes, filename: str, mime: str = "image/png") -> None:
        """Have the browser save ``data`` as ``filename`` (sent as a binary buffer; nothing is written here)."""
        self.send({"type": "download", "filename": str(filename), "mime": str(mime)}, buffers=[bytes(data)])

    # --- status -------------------------------------------------------------------------------

    def running(self, fraction: float = 0.0) -> None:
        with self.hold_sync():
            self.status = "running"
            self.progress = float(fraction)

    def done(self) -> None:
        with self.hold_sync():
            self.status = "idle"
            self.progress = 1.0

    def fail(self, message: str, details: str = "") -> None:
        """Show an error inside the panel (``details``: its traceback, folded); the last good image stays."""
        with self.hold_sync():
            self.status = "error"
            self.error = message
            self.details = details
