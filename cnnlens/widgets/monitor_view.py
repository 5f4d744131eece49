"""Training monitor view: Zeiler & Fergus' Fig. 4 as a timeline that grows while the model trains.

Columns are recorded steps (labelled "step N" in text above them); each unit has one panel with two rows, the
DeconvNet projection of its strongest activation over the probe set and the image patch that caused it, each
placed in the unit's whole receptive field (gray where the field leaves the image, so all tiles share a scale); the
last panel shows the first convolution's filters at each step. ``Monitor.step()`` redraws the view itself,
on the training loop's thread: widget messages sent while a cell runs reach the browser at once, so the
timeline grows during the training cell. The controls (columns, rows) answer when the kernel is idle.
"""

from __future__ import annotations

import math
import traceback

import ipywidgets as W
import torch
import torch.nn.functional as F

from ..core.display import GRAY
from ..dataset.monitor import Box, Monitor, Record
from .base import close_widgets, close_with_front_end
from .deconv_view import projection_image
from .panel import Panel

TILE = 64  # tile side in data pixels
ZOOM = 1.25  # display pixels per data pixel, the same in every panel so the columns line up
SHOWS = (("projection and patch", "both"), ("projection", "projection"), ("patch", "patch"))
def rgb(image: torch.Tensor) -> torch.Tensor:
    """A C×H×W image as 3 channels (gray repeated; the mean of other channel counts)."""
    if image.shape[0] == 3:
        return image
    return (image if image.shape[0] == 1 else image.mean(0, keepdim=True)).expand(3, -1, -1)


def in_field(crop: torch.Tensor, box: Box, field: Box | None, fill: float) -> torch.Tensor:
    """A record's ``crop`` (of ``box``, maybe downsampled) placed in its unit's whole receptive ``field`` at
    the crop's scale, ``fill`` where the field leaves the image: a unit's tiles all show one scale instead of
    border crops stretched to the tile."""
    if field is None or tuple(field) == tuple(box):
        return crop
    h, w = crop.shape[-2:]
    sy, sx = h / max(box[1] - box[0], 1), w / max(box[3] - box[2], 1)
    tile = torch.full((crop.shape[0], max(round((field[1] - field[0]) * sy), h),
                       max(round((field[3] - field[2]) * sx), w)), fill, dtype=crop.dtype)
    y = min(round((box[0] - field[0]) * sy), tile.shape[1] - h)
    x = min(round((box[2] - field[2]) * sx), tile.shape[2] - w)
    tile[:, y:y + h, x:x + w] = crop
    return tile


def fit_tile(image: torch.Tensor, side: int = TILE) -> torch.Tensor:
    """A C×h×w image scaled (keeping its aspect) and centred on a white ``side``×``side`` tile."""
    h, w = image.shape[-2:]
    scale = side / max(h, w)
    size = (max(round(h * scale), 1), max(round(w * scale), 1))
    mode = "nearest" if scale >= 1 else "area"
    scaled = F.interpolate(rgb(image.float())[None], size=size, mode=mode)[0].clamp(0, 1)
    tile = torch.ones(3, side, side)
    y, x = (side - size[0]) // 2, (side - size[1]) // 2
    tile[:, y:y + size[0], x:x + size[1]] = scaled
    return tile


def filter_mosaic(filters: torch.Tensor, side: int = TILE) -> torch.Tensor:
    """K×C×kh×kw filters, each scaled to its own range, in a square mosaic on a white ``side`` tile."""
    flat = filters.flatten(1)
    low, high = flat.min(1).values.view(-1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1)
    return _mosaic((filters - low) / (high - low).clamp(min=1e-12), side)


def change_mosaic(change: torch.Tensor, scale: float, side: int = TILE) -> torch.Tensor:
    """K×C×kh×kw changes of the filters, all on one ``scale`` (gray: no change; ±scale: 0.1 and 0.9, short of
    the mosaic's white margins), in the mosaic of :func:`filter_mosaic`: each filter scaled to its own range looks
    alike from step to step while training moves it, its change does not."""
    return _mosaic((0.5 + 0.4 * change / scale).clamp(0.1, 0.9), side)


def _mosaic(shown: torch.Tensor, side: int) -> torch.Tensor:
    """K×C×kh×kw values in [0, 1] in a square mosaic on a white ``side`` tile."""
    k = shown.shape[0]
    g = math.ceil(math.sqrt(k))
    cell = side // g
    tile = torch.ones(3, side, side)
    for i, f in enumerate(shown):
        big = F.interpolate(rgb(f)[None], size=(cell - 1, cell - 1), mode="nearest")[0]
        y, x = (i // g) * cell, (i % g) * cell
        tile[:, y:y + cell - 1, x:x + cell - 1] = big
    return tile


def shown_records(records: list[Record], columns: int) -> list[Record]:
    """At most ``columns`` records, evenly spread from the first to the last (both always shown)."""
    n = len(records)
    if n <= columns:
        return list(records)
    if columns == 1:
        return [records[-1]]
    picks = sorted({round(i * (n - 1) / (columns - 1)) for i in range(columns)})
    return [records[i] for i in picks]


def grid_panel(title: str) -> Panel:
    return Panel("grid", title, zoomable=False, normalize=False)


def draw(panel: Panel, tiles: torch.Tensor, columns: int, names: list[str], title: str) -> None:
    """N×3×h×w tiles in rows of ``columns``, every data pixel drawn at ``ZOOM`` (so panels line up), one message."""
    rows = math.ceil(len(tiles) / columns)
    h, w = tiles.shape[-2:]
    with panel.hold_sync():
        panel.size = round(max(columns * (w + 1), rows * (h + 1)) * ZOOM)
        panel.columns = columns
        panel.tile_names = names
        panel.show_grid(tiles, title=title)


class MonitorView(W.VBox):
    """The timeline of a :class:`cnnlens.dataset.Monitor` (see the module doc); ``monitor.view()`` makes one.

    ``columns``: how many recorded steps are shown (evenly spread, first and last included); ``show``:
    "both", "projection" or "patch". A failed record shows its error above the timeline (the last good
    timeline stays). ``close()`` stops following the monitor and closes the widgets.
    """

    def __init__(self, monitor: Monitor, *, columns: int = 8, show: str = "both"):
        if not isinstance(monitor, Monitor):
            raise TypeError(f"monitor must be a cnnlens Monitor (cl.monitor(model, units, images)), got "
                            f"{type(monitor).__name__}.")
        if show not in dict(SHOWS).values():
            raise ValueError(f"show must be one of {', '.join(v for _, v in SHOWS)}, got {show!r}.")
        self.monitor = monitor
        self.columns = W.IntSlider(value=columns, min=1, max=max(32, columns), description="columns",
                                   continuous_update=False, tooltip="recorded steps shown, evenly spread")
        self.show = W.Dropdown(options=SHOWS, value=show, description="rows")
        self.header = grid_panel("step")
        self.unit_panels = [grid_panel(unit.description) for unit in monitor.units]
        self.filters = grid_panel(f"filters of {monitor.filters_layer}") if monitor.filters_layer else None
        self.panels = [self.header, *self.unit_panels] + ([self.filters] if self.filters else [])
        self.status = W.Label(self._status_text())
        super().__init__([W.HBox([self.columns, self.show]), self.status, *self.panels])
        for control in (self.columns, self.show):
            control.observe(self._redraw, "value")
        monitor.listen(self._recorded)
        close_with_front_end(self)
        self.redraw()

    def _status_text(self) -> str:
        m = self.monitor
        if not m.records:
            return (f"{len(m.units)} units over {len(m.probe)} probe images: no records yet; call monitor.step() "
                    "in the training loop (or monitor.record() now).")
        last = m.records[-1]
        return (f"{len(m.records)} records (every {m.every} step() calls), last at step {last.step}, "
                f"the last took {last.seconds * 1000:.0f} ms; {len(m.units)} units over {len(m.probe)} probe images")

    def _recorded(self, _monitor: Monitor, outcome: Record | Exception) -> None:
        if isinstance(outcome, Exception):
            message = "".join(traceback.format_exception_only(type(outcome), outcome)).strip()
            details = "".join(traceback.format_exception(type(outcome), outcome, outcome.__traceback__))
            self.header.fail(message, details)  # once, above the timeline; the last good timeline stays
            return
        self.redraw()

    def _redraw(self, _change: dict) -> None:
        self.redraw()

    def redraw(self) -> None:
        """Draw the shown records into every panel (called by ``step()`` and by the controls)."""
        if self.monitor is None:
            return
        self.status.value = self._status_text()
        records = shown_records(self.monitor.records, self.columns.value)
        if not records:
            return
        n = len(records)
        steps = [f"step {r.step}" for r in records]
        with self.header.hold_sync():  # a thin strip per column, its step as text under it
            self.header.captions = steps
            draw(self.header, torch.ones(n, 3, 2, TILE), n, steps, "")
        rows = ("projection", "patch") if self.show.value == "both" else (self.show.value,)
        for k, panel in enumerate(self.unit_panels):
            tiles, names = [], []
            for row in rows:
                for r in records:
                    u = r.units[k]
                    image = projection_image(in_field(u.projection, u.box, u.field, 0.0)) if row == "projection" \
                        else in_field(u.patch, u.box, u.field, GRAY)
                    tiles.append(fit_tile(image))
                    names.append(f"step {r.step} · {u.unit} {row} · activation {u.activation:.3g} · probe image "
                                 f"{u.image} at ({u.y}, {u.x})")
            last = records[-1].units[k]
            draw(panel, torch.stack(tiles), n, names, f"{last.unit}: {' over '.join(rows)} · strongest "
                                                      f"activation {last.activation:.3g} (probe image {last.image})")
        if self.filters is not None:  # the filters over their change since the first record, on one scale
            first = self.monitor.records[0]
            changes = [r.filters - first.filters for r in records]
            scale = max(float(c.abs().max()) for c in changes) or 1.0
            tiles = [filter_mosaic(r.filters) for r in records] + [change_mosaic(c, scale) for c in changes]
            names = [f"step {r.step} · {r.filters_layer}" for r in records] + \
                [f"step {r.step} · change since step {first.step} (±{scale:.3g})" for r in records]
            draw(self.filters, torch.stack(tiles), n, names,
                 f"filters of {records[-1].filters_layer} over their change since step {first.step} "
                 f"(gray: none, one scale ±{scale:.3g})")

    def close(self) -> None:
        """Stop following the monitor and close the view's widgets (closing twice is harmless)."""
        if self.__dict__.get("monitor") is not None:  # (also when __init__ stopped early)
            self.monitor.unlisten(self._recorded)
            self.monitor = None
            for control in (self.columns, self.show):
                control.unobserve(self._redraw, "value")
            for child in list(self.children):
                close_widgets(child)
        super().close()
