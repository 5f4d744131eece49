"""The views over a dataset scan (issue 8, section 2): TopImagesView and ClassImagesView.

They must show exactly the scan's lists (images and order), answer every control, set the shared image
picker on a click, link units without loops, show errors inside the widget, stop everything on close, and
leave a model that is halfway through training untouched.
"""

from __future__ import annotations

import copy
import threading
import time

import numpy as np
import pytest
import torch

import cnnlens as cl
from cnnlens.core.progress import Cancelled
from cnnlens.core.session import look
from cnnlens.widgets import scan_views
from cnnlens.widgets.scan_views import (
    ClassImagesView,
    SharedScan,
    TopImagesView,
    field_window,
    fit,
    hit_projections,
    probability_text,
)

from .conftest import assert_unchanged, random_model, snapshot

N = 120  # images of the default data the tests scan: enough for distinct lists, fast on two cores


@pytest.fixture(scope="module")
def shapes():
    model, data = cl.zoo.shapes()
    return model, [data[i] for i in range(N)]


@pytest.fixture(scope="module")
def scanned(shapes):
    model, data = shapes
    return cl.scan(model, data)


def cnnlens_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("cnnlens")]


def tiles(grid) -> np.ndarray:
    """The N×3×h×w tiles a grid panel was sent."""
    n, h, w, c = grid.shape
    return np.frombuffer(grid.heat, dtype=np.float32).reshape(n, c, h, w)


def shown_indices(view, grid) -> list[int]:
    return [int(name.split()[1]) for name in grid.tile_names]


# --- what the top-images view shows -------------------------------------------------------------------------------


def test_top_images_are_the_scans_top_and_bottom_lists_in_order(shapes, scanned):
    model, data = shapes
    view = TopImagesView(model, data, scan=scanned, layer="stage3", unit=5)
    assert view.wait(60) and view.runner.last_error is None
    expected = scanned.top("stage3", 5)
    assert view.hits == expected and len(expected) == 9
    for grid in (view.projections, view.patches):
        assert shown_indices(view, grid) == [h.index for h in expected]
        assert grid.shape[0] == 9 and grid.columns == 3
    assert "stage3:5" in view.projections.title and f"of {N} images" in view.patches.title

    view.which.value = "bottom"
    assert view.wait(60)
    assert view.hits == scanned.bottom("stage3", 5)
    assert shown_indices(view, view.patches) == [h.index for h in scanned.bottom("stage3", 5)]

    view.unit.value = 7
    assert view.wait(60)
    assert view.hits == scanned.bottom("stage3", 7) != scanned.bottom("stage3", 5)
    assert "a tie" not in view.projections.title

    view.layer.value, view.unit.value = "stage4", 36  # silent on more than 9 images: its lowest are ties at 0
    assert view.wait(60) and {h.value for h in view.hits} == {0.0}
    assert "all 0: a tie, the first images by index" in view.projections.title  # said, not left to look chosen
    view.which.value = "top"
    view.unit.value = 7
    assert view.wait(60)
    assert view.unit.max == 127 and view.hits == scanned.top("stage4", 7)
    view.close()


def test_patches_are_the_receptive_fields_and_projections_are_cl_deconvnet(shapes, scanned):
    model, data = shapes
    layer, unit = "stage3", 2
    view = TopImagesView(model, data, scan=scanned, layer=layer, unit=unit)
    assert view.wait(60)
    hits, patches = view.hits, tiles(view.patches)
    with look(model) as s:
        info = s.layer(layer, (64, 64))
        for k, hit in enumerate(hits):
            image = data[hit.index][0]
            y0, y1, x0, x1 = info.receptive_field(hit.y, hit.x, (64, 64))
            # the window is the unclipped field: the clipped box sits at its offset, gray around it
            oy, ox = y0 - (info.rf_start[0] + hit.y * info.rf_stride), x0 - (info.rf_start[1] + hit.x * info.rf_stride)
            tile = patches[k]
            assert tile.shape[-2:] == (info.rf_size, info.rf_size)
            np.testing.assert_allclose(tile[:, oy:oy + y1 - y0, ox:ox + x1 - x0], image[:, y0:y1, x0:x1].numpy(),
                                       atol=1e-6)
            outside = np.ones(tile.shape[-2:], bool)
            outside[oy:oy + y1 - y0, ox:ox + x1 - x0] = False
            assert np.all(tile[:, outside] == 0.5)
    # every projection equals cl.deconvnet of that one activation
    batch = torch.stack([data[h.index][0] for h in hits])
    raw = hit_projections(model, batch, layer, unit, hits)
    for k, hit in enumerate(hits[:4]):
        reference = cl.deconvnet(model, batch[k], cl.neuron(layer, unit, hit.y, hit.x)).raw
        torch.testing.assert_close(raw[k], reference.reshape(raw[k].shape), rtol=1e-4, atol=1e-6)
        assert raw[k].abs().sum() > 0
    view.close()


def test_field_window_covers_the_image_when_the_field_is_larger():
    info = cl.core.model.LayerInfo("x", "Conv2d", (1, 2, 2), 1, 100, 32, (-18, -18))
    image = torch.rand(3, 64, 64)
    assert torch.equal(field_window(image, info, 1, 0), image)
    assert fit(torch.rand(2, 3, 300, 150)).shape == (2, 3, 96, 48)
    assert fit(torch.rand(2, 3, 20, 20)).shape == (2, 3, 20, 20)


# --- what the class view shows ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mislabelled(shapes):
    """The data with every fifth label moved to the next class: confidently wrong images for every class."""
    model, data = shapes
    return [(img, (label + 1) % 8 if i % 5 == 0 else label) for i, (img, label, _) in enumerate(data)]


def test_class_images_are_the_scans_class_lists_with_scores_as_captions(shapes, mislabelled):
    model, _ = shapes
    result = cl.scan(model, mislabelled)
    view = ClassImagesView(model, mislabelled, scan=result, cls="star")
    assert view.wait(60) and view.runner.last_error is None
    star = result.class_names.index("star")
    for part, expected in (("top", result.class_top(star)), ("bottom", result.class_bottom(star)),
                           ("wrong", result.class_wrong(star))):
        assert expected and view.lists[part] == expected
        grid = view.rows[part]
        assert shown_indices(view, grid) == [h.index for h in expected] and grid.shape[0] == len(expected)
        assert grid.captions[0].endswith(probability_text(expected[0].score))
        assert grid.size == 72 * len(expected)
        np.testing.assert_allclose(tiles(grid)[0], mislabelled[expected[0].index][0].numpy(), atol=1e-6)
    wrong = result.class_wrong(star)[0]
    assert view.rows["wrong"].captions[0] == f"{result.class_names[wrong.label]} → star {wrong.score:.2f}"
    top = result.class_top(star)  # the label is named where it is not the class itself
    assert [c.count(" ") for c in view.rows["top"].captions] == [int(h.label != star) for h in top]
    assert all(c.startswith(result.class_names[h.label]) for c, h in zip(view.rows["bottom"].captions,
                                                                            result.class_bottom(star)))
    assert "star" in view.rows["top"].title

    view.cls.value = 0
    assert view.wait(60)
    assert view.lists["top"] == result.class_top(0) and view.lists["wrong"] == result.class_wrong(0)
    assert "circle" in view.rows["top"].title
    view.close()


def test_a_class_without_wrong_images_says_so_instead_of_an_empty_row(shapes, scanned):
    model, data = shapes
    empty = next(c for c in range(8) if not scanned.class_wrong(c))
    view = ClassImagesView(model, data, scan=scanned, cls=empty)
    assert view.wait(60)
    assert view.rows["wrong"].layout.display == "none" and view.rows["top"].layout.display is None
    assert "no image labelled another class is predicted" in view.note.value
    view.close()
    unlabelled = [img for img, _, _ in data[:30]]
    view = ClassImagesView(model, unlabelled)
    assert view.wait(60)
    assert view.rows["wrong"].layout.display == "none" and "no labels" in view.note.value
    assert view.rows["top"].captions[0].count(" ") == 0  # just the score
    view.close()


# --- clicks, links, sharing ---------------------------------------------------------------------------------------


def test_clicking_a_tile_makes_it_the_current_image_and_outlines_it_everywhere(shapes, scanned):
    import ipywidgets as W

    model, data = shapes
    index = W.IntSlider(value=0, min=0, max=N - 1)
    top = TopImagesView(model, data, index, scan=scanned, layer="stage4", unit=3)
    classes = ClassImagesView(model, data, index, scan=scanned, cls=3)
    assert top.wait(60) and classes.wait(60)
    submitted = top.runner.completed, classes.runner.completed
    top.patches.selected = 4  # a click in the browser sets `selected`
    assert index.value == top.hits[4].index
    assert top.projections.selected == 4  # the projection beside it is outlined too
    classes.rows["bottom"].selected = 2
    hit = classes.lists["bottom"][2]
    assert index.value == hit.index and top.patches.selected == -1
    assert classes.rows["top"].selected == (classes.lists["top"].index(hit) if hit in classes.lists["top"] else -1)
    index.value = top.hits[1].index  # moving the picker outlines, recomputes nothing
    assert top.patches.selected == 1
    assert top.wait(10) and (top.runner.completed, classes.runner.completed) == submitted
    top.close()
    classes.close()
    assert index.comm is not None  # the shared picker stays open


def test_select_moves_the_unit_quietly_with_one_recompute(shapes, scanned, monkeypatch):
    model, data = shapes
    view = TopImagesView(model, data, scan=scanned, layer="stage3", unit=0)
    assert view.wait(60)
    submits = []
    original = view.runner.submit
    monkeypatch.setattr(view.runner, "submit", lambda *a: (submits.append(1), original(*a)))
    heard = []
    view.unit.observe(lambda change: heard.append(view.quiet(change)), "value")
    assert view.select("stage4", 10) is True
    assert (view.layer.value, view.unit.value, view.unit.max) == ("stage4", 10, 127)
    assert submits == [1] and heard == [True]  # one job; observers see the change as the view's own
    assert view.wait(60) and view.hits == scanned.top("stage4", 10)
    assert view.select("stage4", 10) is True and submits == [1]  # already shown: nothing to do
    assert view.select("nope", 1) is False and view.select("stage4", 999) is False and submits == [1]
    view.close()


def test_one_scan_is_shared_by_both_views(shapes, monkeypatch):
    model, data = shapes
    calls = []
    real = scan_views.scan

    def counted(*args, **kwargs):
        calls.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(scan_views, "scan", counted)
    shared = SharedScan(model, data)
    top = TopImagesView(model, data, scan=shared)
    classes = ClassImagesView(model, data, scan=shared)
    assert top.wait(60) and classes.wait(60)
    assert calls == ["cnnlens-scan"] and top.runner.last_error is None and classes.runner.last_error is None
    top.layer.value = "stage2"  # another layer: no new pass
    assert top.wait(60) and calls == ["cnnlens-scan"] and top.hits == shared.result.top("stage2", 0)
    top.close()
    classes.close()
    assert shared.result is not None and not shared.closed  # the Lens owns it and closes it
    shared.close()
    assert cnnlens_threads() == []


def test_inactive_views_scan_nothing_until_activated(shapes, monkeypatch):
    model, data = shapes
    calls = []
    real = scan_views.scan
    monkeypatch.setattr(scan_views, "scan", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    shared = SharedScan(model, data)
    top = TopImagesView(model, data, scan=shared, active=False)
    classes = ClassImagesView(model, data, scan=shared, active=False)
    top.unit.value = 4
    assert top.select("stage3", 2) is True and (top.layer.value, top.unit.value) == ("stage3", 2)
    assert top.wait(5) and classes.wait(5) and calls == [] and top.hits == [] and top.patches.results == 0
    top.activate()  # the tab opened: one scan, the latest controls
    assert top.wait(60) and calls == [1] and top.hits == shared.result.top("stage3", 2)
    classes.activate()
    assert classes.wait(60) and calls == [1] and classes.lists["top"] == shared.result.class_top(0)
    classes.deactivate()
    classes.cls.value = 2
    assert classes.wait(5) and classes.lists["top"] == shared.result.class_top(0)
    classes.activate()
    assert classes.wait(60) and classes.lists["top"] == shared.result.class_top(2)
    for closable in (top, classes, shared):
        closable.close()


# --- lifetime and errors ------------------------------------------------------------------------------------------


def slow_scan(started: threading.Event, stopped: threading.Event):
    """A scan that reports progress until it is cancelled."""

    def run(model, data, *, progress, cancel, **_):
        started.set()
        done = 0
        while not cancel():
            done = min(done + 1, 99)
            progress(done, 100)
            time.sleep(0.01)
        stopped.set()
        raise Cancelled()

    return run


def test_close_while_scanning_stops_the_scan_and_every_thread(shapes, monkeypatch):
    model, data = shapes
    started, stopped = threading.Event(), threading.Event()
    monkeypatch.setattr(scan_views, "scan", slow_scan(started, stopped))
    top = TopImagesView(model, data)
    assert started.wait(10)
    time.sleep(0.4)  # long enough for the progress bar
    assert top.patches.status == "running" and 0 < top.patches.progress < 1
    begin = time.monotonic()
    top.close()
    assert stopped.is_set() and time.monotonic() - begin < 5
    assert cnnlens_threads() == [] and top.shared.closed and top.shared.model is None


def test_the_stop_button_stops_the_scan_and_a_later_change_scans_again(shapes, monkeypatch):
    model, data = shapes
    started, stopped = threading.Event(), threading.Event()
    monkeypatch.setattr(scan_views, "scan", slow_scan(started, stopped))
    shared = SharedScan(model, data)
    top = TopImagesView(model, data, scan=shared)
    classes = ClassImagesView(model, data, scan=shared)
    assert started.wait(10)
    top.patches._message(top.patches, {"type": "stop"}, [])  # the Stop button's message
    assert stopped.wait(5) and top.wait(10) and classes.wait(10)
    assert top.patches.status != "error" and classes.rows["top"].status != "error"
    monkeypatch.setattr(scan_views, "scan", cl.scan)
    top.unit.value = 1
    assert top.wait(60) and top.runner.last_error is None and top.hits == shared.result.top(top.layer.value, 1)
    top.close()
    classes.close()
    shared.close()
    assert cnnlens_threads() == []


def test_a_stop_cancels_requests_made_before_it_even_if_they_arrive_later(shapes, monkeypatch):
    """A view whose worker reaches the shared scan only after another view's Stop (a busy machine) must not
    start the scan again: the Stop cancels every request made before it; a request made after it scans."""
    model, data = shapes
    started, stopped = threading.Event(), threading.Event()
    monkeypatch.setattr(scan_views, "scan", slow_scan(started, stopped))
    shared = SharedScan(model, data)
    early, late = shared.stops, []
    waiting = threading.Thread(target=lambda: late.append(pytest.raises(Cancelled, shared.get, None, None, early)))
    waiting.start()
    assert started.wait(10)
    shared.stop()
    waiting.join(10)
    assert stopped.is_set() and late and not waiting.is_alive()
    started.clear()
    with pytest.raises(Cancelled):  # made before the Stop, arriving after it
        shared.get(None, None, early)
    assert not started.is_set() and shared._thread is None
    monkeypatch.setattr(scan_views, "scan", cl.scan)
    assert shared.get(None, None, shared.stops).count == len(data)
    shared.close()
    assert cnnlens_threads() == []


def test_a_failed_scan_shows_in_every_waiting_view(shapes, monkeypatch):
    model, data = shapes

    def broken(*_, **__):
        raise ValueError("the disk went away")

    monkeypatch.setattr(scan_views, "scan", broken)
    shared = SharedScan(model, data)
    top = TopImagesView(model, data, scan=shared)
    classes = ClassImagesView(model, data, scan=shared)
    assert top.wait(30) and classes.wait(30)
    for panel in (top.patches, top.projections, classes.rows["wrong"]):
        assert panel.status == "error" and "the disk went away" in panel.error and "scan failed" in panel.error
    monkeypatch.setattr(scan_views, "scan", cl.scan)
    classes.cls.value = 1  # the next request scans again
    assert classes.wait(60) and classes.rows["top"].status == "idle" and classes.rows["top"].error == ""
    top.close()
    classes.close()
    shared.close()


def test_a_model_changed_since_the_scan_shows_what_failed_and_keeps_the_images(shapes, scanned):
    model, data = shapes
    model = copy.deepcopy(model)
    view = TopImagesView(model, data, scan=scanned, layer="stage3", unit=5)
    assert view.wait(60) and view.runner.last_error is None
    shown = view.patches.heat
    model.stage3 = torch.nn.Conv2d(32, 4, 1)
    view.unit.value = 40
    assert view.wait(60)
    assert view.patches.status == "error" and "stage3:40 no longer exists" in view.patches.error
    assert view.patches.heat == shown and view.hits == scanned.top("stage3", 5)  # the last good images stay
    view.close()


@pytest.mark.parametrize("make, error, words", [
    (lambda m, d, s: TopImagesView(m, d, scan=s, layer="stage9"), ValueError, ["stage9", "stage4"]),
    (lambda m, d, s: TopImagesView(m, d, scan=s, layer="stage4", unit=128), ValueError, ["unit", "127"]),
    (lambda m, d, s: TopImagesView(m, d, scan="scan.npz"), TypeError, ["scan", "SharedScan"]),
    (lambda m, d, s: ClassImagesView(m, d, scan=s, cls="moon"), ValueError, ["moon", "circle"]),
    (lambda m, d, s: ClassImagesView(m, d, scan=s, cls=8), ValueError, ["cls", "7"]),
    (lambda m, d, s: TopImagesView(m, d[:10], scan=s), ValueError, ["120 images", "10"]),
])
def test_bad_arguments_name_the_argument(shapes, scanned, make, error, words):
    model, data = shapes
    before = snapshot(model)
    with pytest.raises(error) as raised:
        make(model, data, scanned)
    assert all(w in str(raised.value) for w in words), raised.value
    assert_unchanged(model, before)


# --- looking is harmless ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["shapes", "resnet18"])
def test_views_leave_a_model_mid_training_untouched(shapes, which):
    if which == "shapes":
        model = copy.deepcopy(shapes[0])
        data = shapes[1][:24]
    else:
        model = random_model("resnet18")
        data = torch.rand(12, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model.train()
    fired = []
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    handle = conv.register_forward_hook(lambda *_: fired.append(1))
    try:
        before, rng = snapshot(model), torch.get_rng_state()
        shared = SharedScan(model, data)
        top = TopImagesView(model, data, scan=shared, unit=1)
        classes = ClassImagesView(model, data, scan=shared)
        assert top.wait(120) and classes.wait(120)
        assert top.runner.last_error is None and classes.runner.last_error is None and len(top.hits) == 9
        top.which.value = "bottom"
        assert top.wait(120) and top.runner.last_error is None
        top.close()
        classes.close()
        shared.close()
        assert_unchanged(model, before)
        assert fired == [] and torch.equal(rng, torch.get_rng_state())
    finally:
        handle.remove()
        model.eval()


def test_small_probabilities_keep_three_digits_and_never_break_inside_a_caption():
    assert probability_text(0.4567) == "0.46"
    text = probability_text(0.00104)
    assert text == "1.04e\u201103" and probability_text(0.00096) != text  # one digit made both "1e-03"
    assert "-" not in text and " " not in text  # a non-breaking hyphen: the caption wraps between words only

