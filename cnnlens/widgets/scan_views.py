"""Views over one dataset scan: a unit's top-9 images (Zeiler & Fergus Fig. 2) and each class's extremes.

Both views read one :func:`cnnlens.scan` of the view's images. A :class:`SharedScan` runs that scan once, in
its own thread ("cnnlens-scan"), over every spatial layer (so moving a layer control needs no new pass), and
hands the result to every view that asks; a view's job waits for it with the view's progress bar and Stop
button, so the scan's progress shows in every waiting view. A Lens makes one SharedScan and passes it to
both views; a view used alone makes its own. The scan stops when the last view using it closes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import ipywidgets as W
import torch
import torch.nn.functional as F

from ..core.display import GRAY
from ..core.model import LayerInfo
from ..core.objectives import Custom
from ..core.progress import Cancelled, CancelToken, ProgressFn
from ..dataset.scan import ClassHit, Hit, Scan, scan
from ..explain.deconvnet import deconvnet
from .base import Deferred, Images, View, class_names, spatial_layers
from .monitor_view import rgb
from .panel import Panel

TILE = 96  # longest tile side sent to the browser, in pixels
ROW_TILE = 72  # displayed side of a class image, in pixels
THREAD_NAME = "cnnlens-scan"


@dataclass
class _Run:
    """One attempt at the scan: its cancellation token and outcome."""

    token: CancelToken
    done: bool = False
    result: Scan | None = None
    error: BaseException | None = None


class SharedScan:
    """One :func:`cnnlens.scan` of ``images`` (every spatial layer, ``k`` images per list), run once in a
    background thread and shared by the views that ask for it.

    ``get(progress, cancel, requested)`` starts the scan if needed and waits for it, reporting the scan's
    progress; ``stop()`` cancels a running scan and the requests made before it (a later request starts it
    again); ``close()`` stops it for good. Views
    ``attach()`` on creation and ``release()`` on close: when the last one is released, a running scan is
    cancelled. A finished :class:`~cnnlens.Scan` (e.g. one loaded from disk) can be given as ``result``.
    """

    def __init__(self, model: torch.nn.Module, images: Any, *, k: int = 9, batch_size: int = 64,
                 result: Scan | None = None):
        if result is not None and not isinstance(result, Scan):
            raise TypeError(f"result must be a cnnlens Scan or None, got {type(result).__name__}.")
        self.model = model
        self.images = images if isinstance(images, Images) else Images(images, model)
        if result is not None and result.count > len(self.images):
            raise ValueError(f"scan: it covers {result.count} images but images holds {len(self.images)}; "
                             "pass the scan of these images.")
        self.k = k
        self.batch_size = batch_size
        self.result = result
        self.closed = False
        self._users = 0
        self._run: _Run | None = None
        self._thread: threading.Thread | None = None
        self._listeners: list[ProgressFn] = []
        self._lock = threading.Condition()
        self._stops = 0

    def __repr__(self) -> str:
        if self.closed:
            return "SharedScan(closed)"
        state = "done" if self.result else "running" if self._thread else "not started"
        return f"SharedScan({len(self.images)} images, {state})"

    # --- users --------------------------------------------------------------------------------

    def attach(self) -> None:
        """A view starts using this scan."""
        with self._lock:
            self._users += 1

    def release(self) -> None:
        """A view stops using this scan; with no view left, a running scan is cancelled."""
        with self._lock:
            self._users = max(self._users - 1, 0)
            if self._users == 0 and self._run is not None and not self._run.done:
                self._run.token.cancel()

    # --- the scan -----------------------------------------------------------------------------

    @property
    def stops(self) -> int:
        """How many times the scan was stopped. A view's request notes it when it is made and hands it to
        :meth:`get`: a Stop cancels every request made before it, also one whose worker had not reached
        :meth:`get` yet (else that one would start the scan again right after the Stop)."""
        return self._stops

    def get(self, progress: ProgressFn | None = None, cancel: CancelToken | None = None,
            requested: int | None = None) -> Scan:
        """The scan, started if needed and waited for; raises Cancelled when ``cancel`` is set meanwhile, the
        scan was stopped, or it was stopped after the request (``requested``: :attr:`stops` then), and a
        RuntimeError naming the cause when the scan failed."""
        with self._lock:
            if self.closed:
                raise RuntimeError("This SharedScan is closed; make a new view.")
            if self.result is not None:
                return self.result
            if requested is not None and requested != self._stops:
                raise Cancelled()
            if self._run is None or self._run.done:
                self._start()
            run = self._run
            if progress is not None:
                self._listeners.append(progress)
            try:
                while not run.done:
                    if cancel is not None and cancel():
                        raise Cancelled()
                    self._lock.wait(0.05)
            finally:
                if progress is not None:
                    self._listeners.remove(progress)
        if run.error is not None:
            raise RuntimeError(f"The dataset scan failed: {type(run.error).__name__}: {run.error}") from run.error
        if run.result is None:
            raise Cancelled()
        return run.result

    def _start(self) -> None:
        run = _Run(CancelToken())
        self._run = run
        self._thread = threading.Thread(target=self._work, args=(run,), name=THREAD_NAME, daemon=True)
        self._thread.start()

    def _work(self, run: _Run) -> None:
        try:
            run.result = scan(self.model, self.images.source, k=self.k, batch_size=self.batch_size,
                              progress=self._progress, cancel=run.token)
        except Cancelled:
            pass
        except Exception as error:  # shown by every waiting view
            run.error = error
        with self._lock:
            run.done = True
            if run.result is not None and not self.closed:
                self.result = run.result
            if self._thread is threading.current_thread():
                self._thread = None
            self._lock.notify_all()

    def _progress(self, done: int, total: int) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(done, total)

    def stop(self) -> None:
        """Cancel a running scan and the requests made so far (a view's Stop button); the next request
        starts it again."""
        with self._lock:
            self._stops += 1
            if self._run is not None and not self._run.done:
                self._run.token.cancel()

    def close(self, timeout: float = 10.0) -> None:
        """Cancel a running scan, wait for its thread, refuse further requests and drop the model, images
        and result."""
        with self._lock:
            self.closed = True
            if self._run is not None:
                self._run.token.cancel()
            thread = self._thread
            self._lock.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self.model = self.images = self.result = None


# --- tiles --------------------------------------------------------------------------------------


def field_window(image: torch.Tensor, info: LayerInfo, y: int, x: int, fill: float = GRAY) -> torch.Tensor:
    """The receptive field of ``info``'s unit (y, x) cut from a C×H×W ``image``: the field's full size, the
    unit's centre at the tile's centre, ``fill`` where the field leaves the image (the whole image when the
    field covers it), so every tile of a layer shows its part at one scale."""
    h, w = image.shape[-2:]
    if info.rf_stride is None:
        return image
    oy, ey, ox, ex = info.whole_field(y, x, (h, w))
    tile = torch.full((image.shape[0], ey - oy, ex - ox), fill, dtype=image.dtype)
    y0, y1, x0, x1 = max(oy, 0), min(ey, h), max(ox, 0), min(ex, w)
    if y1 > y0 and x1 > x0:
        tile[:, y0 - oy:y1 - oy, x0 - ox:x1 - ox] = image[:, y0:y1, x0:x1]
    return tile


def stretched(raw: torch.Tensor, quantile: float = 0.995) -> torch.Tensor:
    """A signed C×h×w projection around gray, scaled by the ``quantile`` level of its magnitude rather than its
    single peak (a DeconvNet projection is sparse: scaled by its peak, most of it stays near gray)."""
    level = float(torch.quantile(raw.abs().flatten().float(), quantile)) or float(raw.abs().max()) or 1.0
    return (0.5 + 0.5 * raw / level).clamp(0, 1)


def fit(tiles: torch.Tensor, side: int = TILE) -> torch.Tensor:
    """N×3×h×w tiles shrunk (area) so the longer side is at most ``side``; smaller tiles stay as they are
    (the browser enlarges them without smoothing)."""
    h, w = tiles.shape[-2:]
    if max(h, w) <= side:
        return tiles
    scale = side / max(h, w)
    return F.interpolate(tiles, size=(max(round(h * scale), 1), max(round(w * scale), 1)), mode="area")


def hit_projections(model: torch.nn.Module, images: torch.Tensor, layer: str, unit: int,
                    hits: list[Hit]) -> torch.Tensor:
    """The DeconvNet projection of each hit's activation (row k: ``layer``:``unit`` at hits[k]'s position in
    images[k]), in one backward; row k equals ``cnnlens.deconvnet(model, images[k], cnnlens.neuron(layer,
    unit, y, x)).raw`` (rows of a model in eval mode are independent)."""
    where = [(hit.y, hit.x) for hit in hits]

    def chosen(acts, _logits):
        if acts[layer].dim() != 4 or unit >= acts[layer].shape[1]:
            raise ValueError(f"{layer}:{unit} no longer exists: the layer now outputs {tuple(acts[layer].shape[1:])} "
                             "per image (the model changed since the scan). Scan again with a new view.")
        a = acts[layer][:, unit]
        return torch.stack([a[k, y, x] for k, (y, x) in enumerate(where)])

    objective = Custom(chosen, [layer], f"{layer}:{unit} at the scan's positions", needs_logits=False)
    return deconvnet(model, images, objective).raw.detach().cpu()


def _stack(images: Images, indices: list[int]) -> torch.Tensor:
    for i in indices:
        if not 0 <= i < len(images):
            raise ValueError(f"scan: image {i} is not among the {len(images)} images; pass the scan of these images.")
    return torch.stack([images[i][0].cpu().float() for i in indices])


# --- views --------------------------------------------------------------------------------------


class _ScanView(Deferred, View):
    """A view that reads a :class:`SharedScan` (its own unless one is given) and picks images by click.

    Like the synthesis views it computes only while *active* (``active=False``: from :meth:`activate` on, so a
    Lens scans nothing until one of these tabs opens); a change made meanwhile is computed on activation.
    """

    def _use_scan(self, model: torch.nn.Module, images: Images, given: SharedScan | Scan | None,
                  active: bool) -> None:
        if given is not None and not isinstance(given, (SharedScan, Scan)):
            raise TypeError(f"scan must be a SharedScan, a cnnlens Scan or None, got {type(given).__name__}.")
        self._active, self._stale = bool(active), True
        self._own_scan = not isinstance(given, SharedScan)
        self.shared = given if isinstance(given, SharedScan) else SharedScan(model, images, result=given)
        self.shared.attach()

    def _stop_scan(self) -> None:
        if not self.closed:
            self.shared.stop()

    def close(self) -> None:
        if not self.closed:
            shared, own = self.shared, self._own_scan
            super().close()
            shared.release()
            if own:
                shared.close()
        else:
            super().close()

    def image_changed(self) -> None:
        """The image picker moved: outline its tiles (no recompute: the lists do not depend on it)."""
        self.mark()

    def mark(self) -> None:
        """Outline, in every grid, the tiles of the current image."""
        current = self.index.value
        for grid, indices in self._shown.items():
            with self.hushed(grid):
                grid.selected = indices.index(current) if current in indices else -1

    def _clicked(self, change: dict) -> None:
        grid, t = change["owner"], change["new"]
        indices = self._shown.get(grid, [])
        if self.quiet(change) or not 0 <= t < len(indices):
            return
        if self.index.value != indices[t]:
            self.index.value = indices[t]  # the picker's observer outlines it everywhere
        else:
            self.mark()


class TopImagesView(_ScanView):
    """Layer and unit → the receptive-field patches of the unit's top-9 images over the data, each beside its
    DeconvNet projection (Zeiler & Fergus Fig. 2); "bottom" shows the 9 images where the unit's strongest
    activation is lowest. Clicking a tile makes that image the current one (``index``).

    ``scan``: a :class:`SharedScan` to share with other views, or a finished :class:`~cnnlens.Scan` of these
    images; by default the view scans its images itself (once, in the background). ``active=False``: nothing is
    computed (or scanned) until :meth:`activate`. ``select(layer, unit)`` shows a unit chosen in a linked view.
    """

    def __init__(self, model: torch.nn.Module, images: Any, index: W.IntSlider | None = None, *,
                 scan: SharedScan | Scan | None = None, layer: str | None = None, unit: int = 0,
                 active: bool = True):
        images = images if isinstance(images, Images) else Images(images, model)
        table = {info.name: info for info in spatial_layers(model, images) if info.name}
        if isinstance(scan, Scan):
            table = {name: info for name, info in table.items() if name in scan.layers}
            if not table:
                raise ValueError(f"scan: it has none of the model's spatial layers (it has {', '.join(scan.layers)}).")
        self.table = table
        names = list(table)
        layer = names[-1] if layer is None else layer
        if layer not in table:
            raise ValueError(f"Unknown layer {layer!r}. Layers with spatial output: {', '.join(names)}.")
        if isinstance(unit, bool) or not isinstance(unit, int) or not 0 <= unit < table[layer].channels:
            raise ValueError(f"unit must be an int in [0, {table[layer].channels - 1}] for layer {layer!r}, "
                             f"got {unit!r}.")
        self._use_scan(model, images, scan, active)
        self.layer = W.Dropdown(options=names, value=layer, description="layer")
        self.unit = W.IntSlider(value=unit, min=0, max=table[layer].channels - 1, description="unit",
                                continuous_update=False)
        self.which = W.ToggleButtons(options=[("top 9", "top"), ("bottom 9", "bottom")], value="top",
                                     description="images", style={"button_width": "80px"})
        self.projections = Panel("grid", "DeconvNet projections", size=288, columns=3, zoomable=False,
                                 normalize=False)
        self.patches = Panel("grid", "image patches", size=288, columns=3, zoomable=False, normalize=False)
        self.hits: list[Hit] = []
        self._shown: dict[Panel, list[int]] = {}
        super().__init__(model, images, [self.projections, self.patches], [self.layer, self.unit, self.which],
                         index)
        self.watch(self.layer, lambda change: None if self.quiet(change) else self._layer_changed())
        for widget in (self.unit, self.which):
            self.watch(widget, lambda change: None if self.quiet(change) else self.request())
        for grid in (self.projections, self.patches):
            self.watch(grid, self._clicked, "selected")
            grid.on_stop(self._stop_scan)
        self.request()

    def _layer_changed(self) -> None:
        with self.hushed(self.unit):
            self.unit.max = self.table[self.layer.value].channels - 1
        self.request()

    def refresh(self) -> None:
        self._check_open()
        layer, unit, which = self.layer.value, self.unit.value, self.which.value
        model, images, shared, info = self.model, self.images, self.shared, self.table[layer]
        requested = shared.stops

        def compute(progress, cancel, partial):
            result = shared.get(progress, cancel, requested)
            hits = result.top(layer, unit) if which == "top" else result.bottom(layer, unit)
            if not hits:
                return result, hits, None, None
            batch = _stack(images, [hit.index for hit in hits])
            raw = hit_projections(model, batch, layer, unit, hits)
            patches = torch.stack([rgb(field_window(batch[k], info, h.y, h.x)) for k, h in enumerate(hits)])
            projections = torch.stack([rgb(stretched(field_window(raw[k], info, h.y, h.x, 0.0)))
                                       for k, h in enumerate(hits)])
            return result, hits, fit(projections), fit(patches.clamp(0, 1))

        def publish(outcome):
            result, hits, projections, patches = outcome
            self.hits = hits
            self._shown = {self.projections: [h.index for h in hits], self.patches: [h.index for h in hits]}
            names = [f"image {h.index} · activation {h.value:.3g} at ({h.y}, {h.x})" for h in hits]
            order = "highest" if which == "top" else "lowest"
            box = "×".join(str(s) for s in info_side(info, result.input_size))
            for grid in (self.projections, self.patches):
                grid.layout.display = None if hits else "none"
            if not hits:
                return
            # a rectified unit silent on many images: its lowest are ties at 0, the first images by index, at
            # position (0, 0) — say so rather than let the patches look chosen
            tied = which == "bottom" and all(h.value == hits[0].value for h in hits)
            ties = f" · all {hits[0].value:.3g}: a tie, the first images by index" if tied else ""
            with self.hushed(self.projections, self.patches):
                for grid, tiles, title in (
                        (self.projections, projections,
                         f"{layer}:{unit} · DeconvNet projections of its {len(hits)} {order} activations{ties}"),
                        (self.patches, patches,
                         f"the image patches ({box} px field) · of {result.count} images · click to pick one")):
                    grid.tile_names = names
                    grid.show_grid(tiles, title=title)
            self.mark()

        self.runner.submit(compute, publish)


def info_side(info: LayerInfo, size: tuple[int, int]) -> tuple[int, int]:
    """The (height, width) of ``info``'s patches at input ``size``: the field, or the image when smaller."""
    if info.rf_stride is None:
        return tuple(size)
    return min(info.rf_size, size[0]), min(info.rf_size, size[1])


def probability_text(p: float) -> str:
    """A probability in a caption a few characters wide: two decimals, or, below 0.01, three significant digits
    (a random model's 1,000 probabilities all round to "1e-03" with one) with a non-breaking hyphen in the
    exponent, so that a caption wraps between words, never inside the number."""
    return f"{p:.2f}" if p >= 0.01 else f"{p:.2e}".replace("-", "\u2011")


class ClassImagesView(_ScanView):
    """A class → the images the model scores highest and lowest for it, and the most confidently wrong ones
    (labelled another class, predicted as this one), each captioned with the class probability. Clicking
    one makes it the current image (``index``).

    ``scan``: a :class:`SharedScan` to share with other views, or a finished :class:`~cnnlens.Scan` of these
    images; by default the view scans its images itself (once, in the background). ``active=False``: nothing is
    computed (or scanned) until :meth:`activate`.
    """

    ROWS = (("top", "highest-scored"), ("bottom", "lowest-scored"), ("wrong", "most confidently wrong"))

    def __init__(self, model: torch.nn.Module, images: Any, index: W.IntSlider | None = None, *,
                 scan: SharedScan | Scan | None = None, cls: int | str | None = None, active: bool = True):
        images = images if isinstance(images, Images) else Images(images, model)
        self._use_scan(model, images, scan, active)
        names = self._class_names(model, images, scan)
        if isinstance(cls, str):
            if cls not in names:
                raise ValueError(f"Unknown class {cls!r}. Classes: {', '.join(names)}.")
            cls = names.index(cls)
        cls = 0 if cls is None else cls
        if isinstance(cls, bool) or not isinstance(cls, int) or not 0 <= cls < len(names):
            self.shared.release()
            raise ValueError(f"cls must be a class name or an int in [0, {len(names) - 1}], got {cls!r}.")
        self.names = names
        self.cls = W.Dropdown(options=[(name, i) for i, name in enumerate(names)], value=cls, description="class")
        self.rows = {part: Panel("grid", title, size=ROW_TILE * 9, columns=9, zoomable=False, normalize=False)
                     for part, title in self.ROWS}
        self.note = W.HTML("")
        self.lists: dict[str, list[ClassHit]] = {}
        self._shown: dict[Panel, list[int]] = {}
        super().__init__(model, images, list(self.rows.values()), [self.cls], index)
        self.children = (*self.children, self.note)
        self.watch(self.cls, lambda change: None if self.quiet(change) else self.request())
        for grid in self.rows.values():
            grid.layout.width = "100%"  # one row of images per line
            self.watch(grid, self._clicked, "selected")
            grid.on_stop(self._stop_scan)
        self.request()

    @staticmethod
    def _class_names(model: torch.nn.Module, images: Images, given: SharedScan | Scan | None) -> list[str]:
        """The class names: the scan's when it has them, else the model's (one forward of the first image)."""
        result = given.result if isinstance(given, SharedScan) else given
        if result is not None and result.class_names:
            return list(result.class_names)
        from ..core.session import look

        with look(model) as session, torch.no_grad():
            logits = session.logits(images[0][0][None])
        if logits.dim() != 2:
            raise ValueError("model: its output is not one score per class, so there are no class images to show.")
        return class_names(model, logits.shape[1])

    def refresh(self) -> None:
        self._check_open()
        c, images, shared = self.cls.value, self.images, self.shared
        requested = shared.stops

        def compute(progress, cancel, partial):
            result = shared.get(progress, cancel, requested)
            lists = {"top": result.class_top(c), "bottom": result.class_bottom(c), "wrong": result.class_wrong(c)}
            tiles = {part: fit(torch.stack([rgb(images[h.index][0].cpu().float()) for h in hits]).clamp(0, 1))
                     for part, hits in lists.items() if hits}
            if any(h.index >= len(images) for hits in lists.values() for h in hits):
                raise ValueError("scan: it lists images beyond these images; pass the scan of these images.")
            return result, lists, tiles

        def publish(outcome):
            result, lists, tiles = outcome
            self.lists = lists
            self._shown = {self.rows[part]: [h.index for h in hits] for part, hits in lists.items()}
            name = self.names[c]
            notes = []
            for part, title in self.ROWS:
                grid, hits = self.rows[part], lists[part]
                grid.layout.display = None if hits else "none"
                if not hits:
                    notes.append(f"No {title} images for {name!r}: "
                                 + ("no image labelled another class is predicted as it." if self._labelled(lists)
                                    else "the images have no labels."))
                    continue
                with self.hushed(grid):
                    grid.size = ROW_TILE * len(hits)  # every row's tiles at one size, however many
                    grid.tile_names = [self._describe(h) for h in hits]
                    grid.captions = [self._caption(part, h) for h in hits]
                    grid.show_grid(tiles[part], title=f"{title} for {name!r} · p({name}) · of {result.count} images"
                                   + (" · label → prediction" if part == "wrong" else ""))
            self.note.value = "<br>".join(notes)
            self.mark()

        self.runner.submit(compute, publish)

    @staticmethod
    def _labelled(lists: dict[str, list[ClassHit]]) -> bool:
        return any(h.label is not None for hits in lists.values() for h in hits)

    def _name(self, c: int | None) -> str:
        return "?" if c is None else self.names[c] if 0 <= c < len(self.names) else str(c)

    def _caption(self, part: str, hit: ClassHit) -> str:
        """The probability, after the label where it says something (label → prediction for a wrong one)."""
        score = probability_text(hit.score)
        if part == "wrong":
            return f"{self._name(hit.label)} → {self._name(hit.prediction)} {score}"
        if hit.label is None or (part == "top" and hit.label == self.cls.value):
            return score
        return f"{self._name(hit.label)} {score}"

    def _describe(self, hit: ClassHit) -> str:
        return (f"image {hit.index} · label {self._name(hit.label)} · predicted {self._name(hit.prediction)} · "
                f"p = {hit.score:.3g}")
