"""The widget layer without a browser: live runner semantics, binary payloads, sizes, errors."""

from __future__ import annotations

import threading
import time

import ipywidgets as W
import numpy as np
import pytest
import torch
from torch import nn

import cnnlens as cl
from cnnlens.widgets import ActivationsView, AttributionView, DeconvView, OcclusionView, Panel
from cnnlens.widgets.attribution import MAX_COMPARE
from cnnlens.widgets.live import LiveRunner


@pytest.fixture(scope="module")
def shapes():
    return cl.zoo.shapes(16)


def test_latest_request_wins_and_stale_results_are_dropped():
    panel = Panel("heatmap")
    runner = LiveRunner([panel])
    published = []
    started = threading.Event()

    def slow(progress, cancel, partial):
        started.set()
        for _ in range(200):
            time.sleep(0.005)
            if cancel():
                raise cl.Cancelled()
        return "slow"

    runner.submit(slow, published.append)
    started.wait(5)
    for i in range(5):
        runner.submit(lambda p, c, part, i=i: i, published.append)
    assert runner.wait(10)
    assert published == [4]


def test_stop_cancels_running_work():
    panel = Panel("heatmap")
    runner = LiveRunner([panel])
    published, started = [], threading.Event()

    def endless(progress, cancel, partial):
        started.set()
        while not cancel():
            time.sleep(0.01)
        raise cl.Cancelled()

    runner.submit(endless, published.append)
    started.wait(5)
    panel._message(panel, {"type": "stop"}, [])  # what the Stop button sends
    assert runner.wait(5)
    assert published == [] and panel.status == "idle"


def test_partial_results_stream_at_a_bounded_rate_and_the_final_one_lands():
    panel = Panel("heatmap")
    runner = LiveRunner([panel])
    published, marked = [], []

    elapsed = []

    def publish(result):
        panel.show(torch.rand(3, 8, 8), torch.rand(8, 8))
        published.append(result)
        marked.append(panel.partial)

    def streaming(progress, cancel, partial):
        start = time.monotonic()
        for i in range(30):
            partial(i)
            time.sleep(0.01)
        elapsed.append(time.monotonic() - start)
        return "final"

    runner.submit(streaming, publish)
    assert runner.wait(10)
    assert published[0] == 0 and published[-1] == "final"
    partials = len(published) - 1
    assert 2 <= partials <= elapsed[0] / 0.1 + 1 < 30  # at most one partial per 0.1 s, far fewer than offered
    # the front end (and the browser tests) tell a streamed partial from the final result by this marker
    assert marked == [True] * partials + [False]


def test_lime_streams_refits_as_samples_accumulate(shapes):
    from cnnlens.explain.registry import METHODS
    from cnnlens.widgets.attribution import run_method

    model, data = shapes
    image = data.images[3]
    partials = []
    final = run_method(METHODS["lime"], model, image, 0, None, {"samples": 200, "features": 4}, None, None,
                       partials.append)
    assert [p.params["samples"] for p in partials] == [64, 128, 192]
    assert final.params["samples"] == 200
    alone = cl.lime(model, image, 0, samples=200, features=4, seed=0)
    torch.testing.assert_close(final.map, alone.map)  # streaming does not change the result
    assert not torch.equal(partials[0].weights, final.weights)


def test_lime_in_the_view_weights_the_shape_it_explains(shapes):
    """The view hides superpixels with gray: with each superpixel's own mean (the function's default, as the
    reference implementation), the flat-coloured hexagon of the demo's first image is a superpixel that does not
    change when hidden, and the weight goes to the distractor star instead."""
    model, data = shapes
    view = AttributionView(model, data)
    view.method.value = "lime"
    hide = view.method_controls["hide"]
    assert hide.value == "gray" and "mean" in hide.options
    assert view.wait(60) and view.runner.last_error is None
    heat = torch.from_numpy(np.frombuffer(view.panel.heat, np.float32).reshape(64, 64).copy()).abs()
    shape, star = data.masks[0], data.distractor_masks[0]
    assert data.labels[0] == data.classes.index("hexagon") and star.any()
    assert heat[shape].mean() > 3 * heat[star].mean()
    mean_hidden = cl.lime(model, data.images[0], "hexagon", hide="mean", seed=0).map.abs()
    assert mean_hidden[shape].mean() < mean_hidden[star].mean()  # what the gray default avoids


def test_errors_show_in_the_panel_and_keep_the_last_image():
    panel = Panel("heatmap")
    runner = LiveRunner([panel])
    runner.submit(lambda *a: torch.ones(4, 4), lambda r: panel.show(torch.rand(3, 4, 4), r))
    assert runner.wait(5)
    good = panel.image

    def broken(*_):
        raise ValueError("mask_size 99 is larger than the image")

    runner.submit(broken, lambda r: None)
    assert runner.wait(5)
    assert panel.status == "error" and "mask_size 99" in panel.error
    assert panel.image == good


def test_binary_payloads_and_downsampling():
    panel = Panel("heatmap", max_side=100)
    image, heat = torch.rand(3, 300, 200), torch.randn(300, 200)
    panel.show(image, heat)
    assert panel.shape == [100, 66]
    assert isinstance(panel.image, bytes) and len(panel.image) == 100 * 66 * 3
    values = np.frombuffer(panel.heat, dtype=np.float32)
    assert values.size == 100 * 66 and np.isfinite(values).all()


def test_views_compute_for_every_method(shapes):
    model, data = shapes
    view = AttributionView(model, data)
    for name in cl.METHODS:
        view.method.value = name
        assert view.wait(60) and view.runner.last_error is None, (name, view.runner.last_error)
        assert np.frombuffer(view.panel.heat, np.float32).size == 64 * 64
    occlusion = OcclusionView(model, data)
    assert occlusion.wait(60)
    assert occlusion.label_panel.legend and occlusion.label_panel.shape == [64, 64]
    assert "strongest map stage4:" in occlusion.unit_panel.title
    occlusion.layer.value = "stage2"
    assert occlusion.wait(60) and occlusion.unit.max == 31 and "strongest map stage2:" in occlusion.unit_panel.title
    occlusion.unit.value = 7
    assert occlusion.wait(60) and occlusion.unit_panel.title.endswith("map stage2:7")
    labels = np.frombuffer(occlusion.label_panel.heat, np.float32)
    assert set(np.unique(labels).astype(int)) == set(range(len(occlusion.label_panel.legend)))  # only labels present
    deconv = DeconvView(model, data)
    deconv.layer.value = "stage2"
    assert deconv.wait(60) and deconv.unit.max == 31 and len(deconv.input_panel.rect) == 4
    deconv.mode.value = "map"
    assert deconv.wait(60) and deconv.input_panel.rect == [] and deconv.patch.layout.display == "none"


def test_compare_mode_shows_each_method_and_an_error_only_where_one_fails(shapes):
    model, data = shapes
    view = AttributionView(model, data)
    view.layer.value = "stage2"  # CAM needs the layer before the GAP head: it fails here, the others do not
    view.compare.value = ("saliency", "cam", "integrated_gradients")
    assert view.wait(60)
    shown = [p for p in view.compare_panels if p.layout.display != "none"]
    assert len(shown) == 3 and view.panel.layout.display == "none"
    saliency, cam, integrated = shown
    assert saliency.title.startswith("Gradient saliency") and saliency.error == "" and saliency.heat
    assert "gradcam" in cam.error  # CAM's message names the method that works on any head
    assert integrated.error == "" and view.display[2].value  # a signed method turns the signed display on
    assert view.display[0].value == "RdBu_r"  # centred on 0: magma would put 0 at its middle, muddying the rest
    view.compare.value = ()
    assert view.wait(60) and view.panel.layout.display != "none"
    assert all(p.layout.display == "none" for p in view.compare_panels)
    assert not view.display[2].value and view.display[0].value == "magma"  # Grad-CAM's own display again


def test_attribution_draws_occlusion_as_importance_and_compares_at_a_robust_scale(shapes):
    """Occlusion's ``map`` is the probability left with the mask there (low where hiding hurts): drawn as it
    is beside saliency and Grad-CAM its colours ran the other way. Every map is drawn as "matters more is
    higher" (its drop map), and compared maps are divided by their 99.5% level, not their one largest value."""
    from cnnlens.dataset.metrics import importance

    model, data = shapes
    view = AttributionView(model, data)
    view.index.value = 5
    view.method.value = "occlusion"
    assert view.wait(120)
    shown = np.frombuffer(view.panel.heat, np.float32)
    expected = cl.occlusion(model, data.images[5], **{c.name: c.default for c in cl.METHODS["occlusion"].controls})
    drop = importance(expected)
    assert np.allclose(shown, drop.flatten().numpy(), atol=1e-5) and not np.allclose(shown, expected.map.flatten())
    view.compare.value = ("saliency", "occlusion")
    assert view.wait(120)
    saliency = np.frombuffer(view.compare_panels[0].heat, np.float32)
    assert np.quantile(np.abs(saliency), 0.995) == pytest.approx(1.0, abs=0.02) and np.abs(saliency).max() <= 1.0
    view.close()


def test_the_target_follows_the_prediction_as_the_weights_move_unless_the_user_chose_one():
    """Attached to a model in training, the view refreshed after each epoch: its target list (with its
    probabilities) is recomputed when the weights moved, and the target follows the new prediction unless the
    user picked one for this image."""
    torch.manual_seed(0)
    model = cl.zoo.ShapesNet().eval()
    _, data = cl.zoo.shapes(8)
    view = AttributionView(model, data)
    assert view.wait(60)
    first = list(view.target.options)
    with torch.no_grad():
        model.fc.bias += torch.arange(8.0) * 10  # an optimizer step, in place: class 7 predicted now
    view.refresh()
    assert view.wait(60) and view.target.value == 7 and list(view.target.options) != first
    assert view.target.options[0][0].startswith(f"{data.classes[7]} (")  # predicted first, with its probability
    view.target.value = 2  # the user's choice
    assert view.wait(60)
    with torch.no_grad():
        model.fc.bias -= torch.arange(8.0) * 10
    view.refresh()
    assert view.wait(60) and view.target.value == 2  # kept while the weights move
    view.index.value = 1  # another image: the predicted class again
    with torch.no_grad():
        predicted = int(model(data.images[1][None]).argmax())
    assert view.wait(60) and view.target.value == predicted
    view.close()


def test_compare_keeps_its_selection_to_the_panels_it_has(shapes):
    model, data = shapes
    view = AttributionView(model, data)
    chosen = ("saliency", "deconvnet", "cam", "gradcam", "occlusion")
    view.compare.value = chosen
    assert view.wait(120)
    assert view.compare.value == chosen[:MAX_COMPARE] and str(MAX_COMPARE) in view.compare.tooltip
    assert sum(p.layout.display != "none" for p in view.compare_panels) == MAX_COMPARE


def test_a_label_map_over_1000_classes_lists_only_the_labels_present_in_distinct_colours():
    panel = Panel("labels")
    labels = torch.tensor([[5, 5, 900], [17, 5, 900]])
    panel.show_labels(labels, [f"class {i}" for i in range(1000)])
    assert [name for name, _ in panel.legend] == ["class 5", "class 17", "class 900"]
    assert len({tuple(color) for _, color in panel.legend}) == 3
    drawn = np.frombuffer(panel.heat, np.float32).reshape(2, 3)
    assert drawn.tolist() == [[0, 0, 2], [1, 0, 2]]  # indices into the legend


def test_a_class_keeps_its_colour_in_every_label_map_and_in_the_scatter():
    names = ["circle", "square", "triangle", "hexagon"]
    maps, scatter = Panel("labels"), Panel("scatter")
    maps.show_labels(torch.tensor([[3, 3], [1, 3]]), names)
    first = dict((name, tuple(color)) for name, color in maps.legend)
    maps.show_labels(torch.tensor([[3, 0], [2, 3]]), names)  # other classes present: hexagon stays hexagon's
    second = dict((name, tuple(color)) for name, color in maps.legend)
    scatter.show_scatter(torch.zeros(1, 2), torch.zeros(3, 1, dtype=torch.long), names)
    legend = dict((name, tuple(color)) for name, color in scatter.legend)
    assert first["hexagon"] == second["hexagon"] == legend["hexagon"]
    assert first["square"] == legend["square"] and second["circle"] == legend["circle"]


def test_views_take_a_single_image_in_any_form(shapes):
    from PIL import Image

    from cnnlens.widgets.base import Images

    model, data = shapes
    array = (data.images[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    for source in (array, Image.fromarray(array), data.images[0], array.transpose(2, 0, 1)):
        images = Images(source, model)
        assert len(images) == 1 and images[0][0].shape == (3, 64, 64), type(source)
    assert len(Images(data.images[:3], model)) == 3 and len(Images([array, array], model)) == 2


def test_a_2048_channel_layer_still_renders_its_grid():
    class Wide(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2048, 3, padding=1)
            self.fc = nn.Linear(2048, 4)

        def forward(self, x):
            return self.fc(self.conv(x).relu().mean((2, 3)))

    view = ActivationsView(Wide(), torch.rand(2, 3, 64, 64))
    view.layer.value = "conv"
    assert view.wait(60) and view.runner.last_error is None
    count, h, w, _ = view.grid.shape
    assert count == 2048 and len(view.grid.heat) == count * h * w * 4 <= 8_000_000 + 4 * count


def test_lens_shares_one_image_picker(shapes):
    model, data = shapes
    lens = cl.Lens(model, data)
    assert lens.wait(60)
    lens.index.value = 3
    assert lens.wait(60)
    assert [v.runner.last_error for v in lens.views.values()] == [None] * len(lens.views)
    assert all(v.index is lens.index for v in lens.views.values())


@pytest.mark.parametrize("view_class", [AttributionView, OcclusionView, DeconvView, ActivationsView])
def test_moving_the_image_picker_submits_one_job(shapes, view_class):
    model, data = shapes
    view = view_class(model, data)
    assert view.wait(60)
    submitted = []
    submit = view.runner.submit
    view.runner.submit = lambda *args: (submitted.append(1), submit(*args))
    view.index.value = 2
    assert view.wait(60) and view.runner.last_error is None
    assert len(submitted) == 1


# --- issue 6: views clean up after themselves; looking stays harmless ---------------------------------------------


def cnnlens_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("cnnlens")]


def widget_ids(widget) -> set[str]:
    """Model ids of ``widget`` and everything below it (children, layouts, styles) with an open comm."""
    found, stack = set(), [widget]
    while stack:
        w = stack.pop()
        if w is None or getattr(w, "comm", None) is None:
            continue
        found.add(w.model_id)
        stack += list(getattr(w, "children", ())) + [getattr(w, "layout", None), getattr(w, "style", None)]
    return found


def test_closing_a_lens_releases_threads_widgets_and_the_model(shapes):
    import gc
    import weakref

    from ipywidgets.widgets.widget import _instances

    from cnnlens.zoo import shapes_model

    _, data = shapes
    model = shapes_model()  # a fresh model: the only references are ours
    alive = weakref.ref(model)
    lens = cl.Lens(model, data)
    lens.index.value = 2
    assert lens.wait(60)
    view = lens.views["Attribution"]
    view.method.value = "lime"  # a streaming job, its progress timer and its closures...
    owned = widget_ids(lens) | {p.model_id for v in lens.views.values() for p in v.panels}
    links = [link.model_id for link in view._links]
    assert owned and links and cnnlens_threads()
    lens.close()  # ...cancelled while it runs
    assert cnnlens_threads() == []
    assert not (owned | set(links)) & set(_instances)  # every widget of the lens closed, jslinks included
    del lens, view, model
    gc.collect()
    assert alive() is None


def test_twenty_lenses_leave_no_worker_thread(shapes):
    model, data = shapes
    for i in range(20):
        lens = cl.Lens(model, data)
        if i % 2:
            assert lens.wait(60)  # half of them idle, half closed mid-computation
        lens.close()
    assert cnnlens_threads() == []


def test_an_idle_view_holds_no_thread(shapes):
    model, data = shapes
    view = DeconvView(model, data)
    assert view.wait(60)
    assert view.runner._thread is None  # the worker ended with its last job...
    for thread in cnnlens_threads():
        thread.join(5)  # ...and is at most returning
    assert cnnlens_threads() == []
    view.unit.value = 3  # the next change starts one again
    assert view.wait(60) and view.runner.last_error is None and "unit stage4:3" in view.input_panel.title
    view.close()


def test_closing_the_comm_from_the_front_end_closes_the_view(shapes):
    import comm

    model, data = shapes
    for widget in (OcclusionView(model, data), cl.Lens(model, data)):
        runners = [v.runner for v in getattr(widget, "views", {"": widget}).values()]
        msg = {"content": {"comm_id": widget.comm.comm_id, "data": {}}}
        comm.get_comm_manager().comm_close(None, None, msg)  # what the kernel does on a front end's comm_close
        assert all(r.closed for r in runners) and widget.comm is None
    assert cnnlens_threads() == []


def test_a_closed_view_ignores_its_controls_and_says_so_when_asked_to_compute(shapes):
    model, data = shapes
    index = W.IntSlider(value=0, min=0, max=len(data) - 1)  # a picker shared with someone else stays usable
    view = AttributionView(model, data, index)
    assert view.wait(60)
    view.close()
    view.close()  # twice is harmless
    view.method.value = "saliency"
    view.layer.value = "stage2"
    index.value = 3
    assert index.comm is not None and cnnlens_threads() == []
    with pytest.raises(RuntimeError, match="closed"):
        view.refresh()


def test_replaced_method_controls_are_closed(shapes):
    from ipywidgets.widgets.widget import _instances

    model, data = shapes
    view = AttributionView(model, data)
    view.method.value = "lime"
    before = len(_instances)
    for name in ("occlusion", "smoothgrad", "lime") * 3:
        view.method.value = name
    assert len(_instances) == before
    assert len(view._watching) == len({id(w) for w, _, _ in view._watching})
    view.close()


def test_a_progress_timer_firing_late_does_not_cover_the_final_state(monkeypatch):
    timers = []

    class LateTimer:
        """A timer whose cancel() comes too late: it fires only when the test says so."""

        def __init__(self, interval, function):
            self.function = function
            timers.append(self)

        def start(self):
            pass

        def cancel(self):
            pass

        def join(self):
            pass

    monkeypatch.setattr(threading, "Timer", LateTimer)
    panels = [Panel("heatmap"), Panel("image")]
    runner = LiveRunner(panels)
    runner.submit(lambda *a: 1, lambda r: panels[0].show(heat=torch.ones(2, 2)))
    assert runner.wait(5)
    runner.submit(lambda *a: 1 / 0, lambda r: None)
    assert runner.wait(5)
    for timer in timers:
        timer.function()  # both fire after their job finished (done, then failed)
    assert [p.status for p in panels] == ["error", "error"]
    runner.submit(lambda *a: 2, lambda r: panels[0].show(heat=torch.ones(2, 2)))
    assert runner.wait(5)
    timers[-1].function()
    assert [p.status for p in panels] == ["idle", "idle"]


def test_the_progress_bar_still_shows_for_long_work_and_ends_idle(monkeypatch):
    from cnnlens.widgets import live

    monkeypatch.setattr(live, "SHOW_PROGRESS_AFTER", 0.0)
    panel = Panel("heatmap")
    runner = LiveRunner([panel])
    seen = threading.Event()
    statuses = []

    def long(progress, cancel, partial):
        while not seen.wait(0.01):  # until the timer has shown the progress bar
            if panel.status == "running":
                statuses.append(panel.status)
                seen.set()
        progress(1, 2)
        return 1

    runner.submit(long, lambda r: None)
    assert runner.wait(10)
    assert statuses == ["running"] and panel.status == "idle" and panel.progress == 1.0


FORWARD_THREADS: list[threading.Thread] = []  # module-level: the shadow copies the module, not this list


class ThreadRecorder(nn.Module):
    """A small CNN that records which thread runs each forward."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        FORWARD_THREADS.append(threading.current_thread())
        return self.fc(self.conv(x).relu().mean((2, 3)))


@pytest.mark.parametrize("view_class", [AttributionView, OcclusionView, DeconvView, ActivationsView])
def test_changing_the_image_runs_no_forward_on_the_callers_thread(view_class):
    threads = FORWARD_THREADS
    threads.clear()
    images = torch.rand(4, 3, 32, 32)
    view = view_class(ThreadRecorder(), images)
    assert view.wait(60) and view.runner.last_error is None
    construction = [t.name for t in threads if t is threading.current_thread()]
    assert len(construction) <= 1  # at most the layer-table probe (cached per model and size)
    threads.clear()
    view.index.value = 2
    assert view.wait(60) and view.runner.last_error is None
    assert threads and all(t.name == "cnnlens-live" for t in threads), [t.name for t in threads]
    if hasattr(view, "target"):  # the job filled the target dropdown for the new image: predicted class first
        with torch.no_grad():
            logits = view.model(images[2:3])[0]
        assert view.target.value == int(logits.argmax()) == view.target.options[0][1]
        assert len(view.target.options) == 3
    view.close()


def test_a_target_picked_by_the_user_is_kept_while_the_new_image_is_classified(shapes):
    model, data = shapes
    view = AttributionView(model, data)
    assert view.wait(60)
    predicted = int(model(data.images[5:6]).argmax())
    chosen = next(c for c in range(8) if c not in (predicted, view.target.value))
    view.index.value = 5
    view.target.value = chosen  # before the job for image 5 has filled the dropdown
    assert view.wait(60) and view.runner.last_error is None
    assert view.target.value == chosen and view.panel.title.startswith(f"Grad-CAM · {data.classes[chosen]} (")
    assert view.target.options[0][1] == predicted
    view.close()


def test_errors_keep_their_traceback_in_the_details():
    panel = Panel("heatmap")
    runner = LiveRunner([panel])

    def deep_failure(*_):
        raise ValueError("mask_size 99 is larger than the image")

    runner.submit(deep_failure, lambda r: None)
    assert runner.wait(5)
    assert panel.error == "ValueError: mask_size 99 is larger than the image"
    assert panel.details.startswith("Traceback (most recent call last)")
    assert "in deep_failure" in panel.details and panel.details.rstrip().endswith(panel.error)
    runner.submit(lambda *a: 1, lambda r: panel.show(heat=torch.ones(2, 2)))
    assert runner.wait(5) and panel.error == "" and panel.details == ""
    runner.close()


def test_compare_mode_errors_keep_their_traceback(shapes):
    model, data = shapes
    view = AttributionView(model, data)
    view.layer.value = "stage2"
    view.compare.value = ("cam",)
    assert view.wait(60)
    panel = view.compare_panels[0]
    assert "gradcam" in panel.error and "Traceback" in panel.details and "cam.py" in panel.details
    view.close()


def test_datasets_of_dicts_and_tuples_of_any_length(shapes):
    from cnnlens.widgets.base import Images

    model, data = shapes
    img = data.images[0]
    cases = [
        ([{"image": img, "label": 3}], 3),
        ([{"img": img, "target": torch.tensor(2)}], 2),
        ([{"pixel_values": img[None], "labels": np.int64(5)}], 5),
        ([{"image": img}], None),
        ([(img,)], None),
        ([(img, 4)], 4),
        ([(img, 4, data.masks[0], "extra")], 4),
        ([(img, data.masks[0])], None),  # the second element is not a label
        ([[img, 1]], 1),
        ([img], None),
    ]
    for source, label in cases:
        image, found = Images(source, model)[0]
        assert image.shape == (3, 64, 64) and torch.equal(image, img) and found == label, (source, label)
    with pytest.raises(ValueError, match=r"keys 'photo', 'cls'.*'image'"):
        Images([{"photo": img, "cls": 1}], model)[0]
    view = ActivationsView(model, [{"image": data.images[i], "label": int(data.labels[i])} for i in range(3)])
    view.index.value = 1
    assert view.wait(60) and view.runner.last_error is None
    view.close()


def test_run_method_reads_everything_from_the_registry_entry():
    import inspect

    from cnnlens.explain.registry import METHODS, MethodInfo
    from cnnlens.widgets.attribution import run_method

    calls = []

    def fake(model, x, target, **kwargs):
        calls.append(kwargs)
        if "partial" in kwargs:
            kwargs["partial"]("intermediate")
        return "final"

    streamed = []
    info = MethodInfo("fake", "Fake", fake, "", has_layer=True, long_running=True, streams=True, seeded=True)
    assert run_method(info, None, None, 0, "l", {"a": 1}, "p", "c", streamed.append) == "final"
    assert calls[-1] == {"a": 1, "layer": "l", "progress": "p", "cancel": "c", "seed": 0, "partial": streamed.append}
    assert streamed == ["intermediate"]
    run_method(MethodInfo("plain", "Plain", fake, ""), None, None, 0, "l", {}, "p", "c", streamed.append)
    assert calls[-1] == {}
    for method in METHODS.values():  # the registry's promises hold for the real functions
        parameters = inspect.signature(method.function).parameters
        assert not method.streams or "partial" in parameters, method.name
        assert not method.seeded or "seed" in parameters, method.name
        assert not method.long_running or {"progress", "cancel"} <= set(parameters), method.name
    assert METHODS["lime"].streams and METHODS["lime"].seeded and METHODS["smoothgrad"].seeded


def test_occlusion_streams_from_the_engine_not_from_a_coarse_pass_in_the_view(shapes, monkeypatch):
    from cnnlens.widgets import occlusion_view

    calls = []

    def counted(*args, **kwargs):
        calls.append(kwargs)
        return cl.occlusion(*args, **kwargs)

    monkeypatch.setattr(occlusion_view, "occlusion", counted)
    model, data = shapes
    view = OcclusionView(model, data)
    assert view.wait(60)
    calls.clear()
    before = view.prob_panel.results
    view.mask_size.value = 8
    assert view.wait(60) and view.runner.last_error is None
    # one call streams the coarse maps and the preview; a second computes the exact map only if the preview
    # was an approximation
    assert callable(calls[0]["partial"]) and calls[0]["stride"] == view.stride.value
    assert calls[0]["quality"] == occlusion_view.PREVIEW_QUALITY and len(calls) in (1, 2)
    assert all("quality" not in c for c in calls[1:])
    from cnnlens.explain.occlusion import _passes

    passes = _passes((64, 64), 8, view.stride.value)
    # the engine's coarser maps (the first always drawn, later ones unless within the runner's 0.1 s), then the final
    assert 2 <= view.prob_panel.results - before <= len(passes) + len(calls) - 1, (passes, view.prob_panel.results)
    assert "preview" not in view.prob_panel.title  # the last map drawn is the exact one
    calls.clear()
    view.stride.value = 2  # 25 × 25 positions: the preview is an approximation, then the exact map comes
    assert view.wait(60) and len(calls) == 2
    reached = float(view.prob_panel.title.split("reached SSIM ")[1].rstrip(")"))
    assert "exact (the approximate map reached SSIM" in view.prob_panel.title and 0.9 <= reached <= 1
    view.close()


# --- issue 7: synthesis views (Features, Classes) and linked units ------------------------------------------------


def recording(monkeypatch, module, name="visualize"):
    """Wrap ``module.<name>`` so each call's targets and keyword arguments are recorded."""
    calls, real = [], getattr(module, name)

    def recorded(model, *args, **kwargs):
        calls.append((args, kwargs))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(module, name, recorded)
    return calls


def titles_of(panel) -> list[str]:
    seen = []
    panel.observe(lambda change: seen.append(change["new"]), "title")
    return seen


def test_features_controls_reach_the_engine_in_one_batched_call(shapes, monkeypatch):
    from cnnlens.widgets import FeaturesView, features_view

    calls = recording(monkeypatch, features_view)
    model, data = shapes
    view = FeaturesView(model, data, layer="stage3", unit=10, steps=8, size=32)
    assert view.wait(60) and view.runner.last_error is None
    (targets,), options = calls[-1]
    assert [t.description for t in targets] == [cl.channel("stage3", u).description for u in range(8, 13)]
    assert options["steps"] == 8 and options["size"] == 32 and options["preset"] == "lucid"
    assert callable(options["partial"]) and callable(options["progress"]) and options["cancel"] is not None
    for control, value, key in ((view.preset, "keras", "preset"), (view.strength, 0.8, "strength"),
                                (view.steps, 12, "steps"), (view.size, 40, "size"), (view.starts, 2, "starts"),
                                (view.diversity, 5.0, "diversity")):
        calls.clear()
        control.value = value
        assert view.wait(60) and view.runner.last_error is None, key
        assert len(calls) == 1 and calls[0][1][key] == value, key
    assert view.steps.value == 12  # given steps stay when the preset changes
    assert view.image_panel.shape == [40, 2 * 40 + 2]  # two starts side by side
    assert view.image_panel.title.startswith("stage3:10 · keras · 12 steps · objective ")
    calls.clear()
    view.neighbours.value = 0
    assert view.wait(60) and len(calls[0][0][0]) == 1 and view.row.layout.display == "none"
    view.neighbours.value = 1
    view.unit.value = 0  # the window stays inside the layer
    assert view.wait(60) and [t.description for t in calls[-1][0][0]] == [
        cl.channel("stage3", u).description for u in (0, 1, 2)]
    assert view.row.columns == 3 and view.row.selected == 0 and view.row.shape[:3] == [3, 40, 40]
    assert view.row.tile_names == ["unit 0", "unit 1", "unit 2"] and not view.row.normalize
    view.layer.value = "stage2"
    assert view.wait(60) and view.unit.max == 31 and view.image_panel.title.startswith("stage2:0 ·")
    view.close()


def test_features_steps_follow_the_preset_unless_given(shapes):
    from cnnlens.synthesize import PRESETS
    from cnnlens.widgets import FeaturesView

    model, data = shapes
    view = FeaturesView(model, data, active=False)  # computes nothing until activated
    assert view.steps.value == PRESETS["lucid"].steps and view.size.value == 64
    view.preset.value = "keras"
    assert view.steps.value == PRESETS["keras"].steps
    assert view.runner._thread is None and view.image_panel.results == 0
    view.close()


def test_features_stream_partial_images_and_clicking_a_neighbour_opens_it(shapes):
    from cnnlens.widgets import FeaturesView

    model, data = shapes
    view = FeaturesView(model, data, layer="stage3", unit=4, steps=200, size=32, active=False)
    titles = titles_of(view.image_panel)
    view.activate()
    assert view.wait(120) and view.runner.last_error is None
    running = [t for t in titles if " · step " in t]
    assert running and titles[-1].startswith("stage3:4 · lucid · 200 steps · objective ")
    steps = [int(t.split(" · step ")[1].split("/")[0]) for t in running]
    assert steps == sorted(steps) and all(s % 4 == 0 and s < 200 for s in steps)
    assert view.row.results == view.image_panel.results  # the row streams with the image
    view.row.selected = 0  # what a click on the first neighbour sends
    assert view.unit.value == 2
    assert view.wait(120) and view.image_panel.title.startswith("stage3:2 ·") and view.row.selected == 2
    view.close()


def test_features_stop_keeps_the_last_streamed_image_and_saves_it_as_png(shapes):
    import io

    from PIL import Image

    from cnnlens.core.display import to_uint8
    from cnnlens.widgets import FeaturesView
    from cnnlens.widgets.synthesis import stretch

    model, data = shapes
    view = FeaturesView(model, data, layer="stage2", unit=3, steps=2000, size=48, neighbours=0, active=False)
    assert view.save.disabled
    titles = titles_of(view.image_panel)
    start = time.monotonic()
    view.activate()
    while not any(" · step " in t for t in titles) and time.monotonic() - start < 60:
        time.sleep(0.02)
    view.image_panel._message(view.image_panel, {"type": "stop"}, [])  # the Stop button
    assert view.wait(30)
    assert time.monotonic() - start < 60 and view.image_panel.status == "idle"
    assert "stopped at step " in view.image_panel.title and "/2000" in view.image_panel.title
    stopped = int(view.image_panel.title.split("stopped at step ")[1].split("/")[0])
    assert 0 < stopped < 2000 and len(view.result.history) == stopped
    image = view.result.images[0]
    assert view.image_panel.image == to_uint8(stretch(image[None])[0]).tobytes()  # contrast stretched by default
    results, submitted = view.image_panel.results, view.runner.completed
    view.contrast.value = False  # a display option: redrawn, not recomputed
    assert view.image_panel.image == to_uint8(image).tobytes() and view.image_panel.results == results + 1
    assert view.runner.completed == submitted and "stopped at step " in view.image_panel.title
    sent = []
    view.image_panel.send = lambda content, buffers=None: sent.append((content, buffers))
    assert not view.save.disabled
    view.save.click()
    (content, (data_,)), = sent
    assert content == {"type": "download", "filename": "stage2_3_lucid.png", "mime": "image/png"}
    decoded = np.asarray(Image.open(io.BytesIO(data_)))
    assert decoded.shape == (48, 48, 3) and np.array_equal(decoded, to_uint8(image))  # the image as shown
    view.close()


def test_contrast_stretch_shows_flat_images_and_leaves_full_range_ones_alone():
    from cnnlens.widgets.synthesis import stretch

    torch.manual_seed(0)
    flat = 0.5 + 0.03 * torch.randn(2, 3, 16, 16)  # a keras image: a few small steps from gray
    shown = stretch(flat)
    assert shown.shape == flat.shape and shown.amin() == 0 and shown.amax() == 1
    assert torch.corrcoef(torch.stack([shown.flatten(), flat.flatten()]))[0, 1] > 0.99  # same pattern
    full = torch.rand(1, 3, 32, 32)
    assert (stretch(full) - full).abs().max() < 0.02


def test_features_errors_show_in_the_panel_and_the_image_stays(shapes):
    from cnnlens.widgets import FeaturesView

    class Small(nn.Module):  # refuses inputs larger than 40 px, with a clear message
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, padding=1)

        def forward(self, x):
            if x.shape[-1] > 40:
                raise ValueError(f"this model takes at most 40 px, got {x.shape[-1]}")
            return self.conv(x).relu().mean((2, 3))

    view = FeaturesView(Small(), torch.rand(2, 3, 32, 32), steps=8, size=32)
    assert view.wait(60) and view.runner.last_error is None
    good = view.image_panel.image
    view.size.value = 64
    assert view.wait(60)
    assert view.image_panel.status == "error" and "at most 40 px, got 64" in view.image_panel.error
    assert "Traceback" in view.image_panel.details and view.image_panel.image == good
    view.size.value = 24
    assert view.wait(60) and view.image_panel.status == "idle" and not view.image_panel.error
    view.close()


def test_classes_view_shows_raw_beside_lucid_with_confidence(shapes, monkeypatch):
    from cnnlens.widgets import ClassesView, classes_view

    calls = recording(monkeypatch, classes_view)
    model, data = shapes
    view = ClassesView(model, data, steps=24)
    assert [o[0] for o in view.target.options] == list(data.classes)
    raw_titles, regular_titles = titles_of(view.raw_panel), titles_of(view.regular_panel)
    assert view.wait(120) and view.runner.last_error is None
    assert [(args[0], kw["preset"], kw["steps"]) for args, kw in calls] == [(0, "raw", 24), (0, "lucid", 24)]
    for panel, preset in ((view.raw_panel, "raw"), (view.regular_panel, "lucid")):
        title = panel.title
        assert title.startswith(f"circle · {preset} · P(circle) = "), title
        confidence = float(title.split(" = ")[1].split("%")[0]) / 100
        result = view.results[preset]
        assert abs(confidence - float(result.confidence[0])) < 1e-3
    assert any(" · step " in t for t in raw_titles + regular_titles)  # both streamed while optimizing
    calls.clear()
    view.target.value = 3
    view.preset.value = "keras"
    view.strength.value = 0.2
    assert view.wait(120) and view.runner.last_error is None
    assert [(args[0], kw["preset"], kw["strength"]) for args, kw in calls[-2:]] == [(3, "raw", None),
                                                                                   (3, "keras", 0.2)]
    assert view.regular_panel.title.startswith("star · keras · P(star) = ")
    assert view.filename() == "class_star_raw_keras.png" and view.png()[:8] == b"\x89PNG\r\n\x1a\n"
    view.close()


def test_class_images_are_made_at_the_size_the_model_takes():
    """With no input size configured the view optimized at 128 px, which a head of Flatten → Linear refuses; it
    now uses the images' size, as the Features view does."""
    from cnnlens.widgets import ClassesView

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 30 * 30, 3)).eval()
    view = ClassesView(model, torch.rand(3, 3, 32, 32), steps=4)
    try:
        assert view.wait(60) and view.runner.last_error is None and not view.raw_panel.error
        assert tuple(view.results["raw"].images.shape[-2:]) == (32, 32)
    finally:
        view.close()


def test_the_fooling_image_is_near_certain(shapes):
    from cnnlens.widgets import ClassesView

    model, data = shapes
    view = ClassesView(model, data, target=5, preset="keras")  # the presets' own steps (raw: 200)
    assert view.wait(120) and view.runner.last_error is None
    assert float(view.results["raw"].confidence[0]) >= 0.99
    view.close()


def test_lens_links_units_both_ways_and_computes_synthesis_only_in_its_open_tab(shapes, monkeypatch):
    from cnnlens.widgets import features_view

    calls = recording(monkeypatch, features_view)
    model, data = shapes
    lens = cl.Lens(model, data, options={"Features": {"steps": 8, "size": 32}})
    activations, deconv, features = (lens.views[k] for k in ("Activations", "DeconvNet", "Features"))
    assert lens.wait(60) and calls == []  # the Features tab is closed: nothing optimized yet
    submitted = {name: [] for name in lens.views}
    for name, view in lens.views.items():
        submit = view.runner.submit
        view.runner.submit = lambda *a, submit=submit, name=name: (submitted[name].append(1), submit(*a))
    activations.layer.value = "stage3"
    assert lens.wait(60)
    activations.grid.selected = 7  # a click on feature map 7
    assert (features.layer.value, features.unit.value) == ("stage3", 7) == (deconv.layer.value, deconv.unit.value)
    assert lens.wait(60) and calls == [] and len(submitted["DeconvNet"]) == 1
    lens.tabs.selected_index = lens.titles.index("Features")  # opening the tab computes the chosen unit
    assert lens.wait(60) and len(calls) == 1 and features.image_panel.title.startswith("stage3:7 ·")
    for counts in submitted.values():
        counts.clear()
    features.unit.value = 12  # and back: Features moves DeconvNet and the Activations selection
    assert lens.wait(60)
    assert (deconv.layer.value, deconv.unit.value) == ("stage3", 12) and activations.grid.selected == 12
    assert "unit stage3:12" in deconv.input_panel.title
    assert {k: len(v) for k, v in submitted.items() if v} == {"DeconvNet": 1, "Features": 1}  # no loop
    deconv.layer.value = "stage2"  # DeconvNet moves Features (one job each)
    assert lens.wait(60) and features.layer.value == "stage2" and features.unit.value == deconv.unit.value
    assert features.image_panel.title.startswith(f"stage2:{deconv.unit.value} ·")
    assert activations.layer.value == "stage2" and activations.grid.selected == deconv.unit.value
    lens.tabs.selected_index = 0
    calls.clear()
    deconv.unit.value = 5
    assert lens.wait(60) and features.unit.value == 5 and calls == []  # deferred until the tab opens again
    lens.close()
    assert cnnlens_threads() == []
    with pytest.raises(ValueError, match="no tab 'Feature' takes options. Tabs that take options: Top images, "
                                         "Class images, Embedding, Filters, Features"):
        cl.Lens(model, data, options={"Feature": {"steps": 8}})


def test_closing_a_synthesis_view_mid_optimization_releases_everything(shapes):
    import gc
    import weakref

    from ipywidgets.widgets.widget import _instances

    from cnnlens.widgets import ClassesView, DreamView, FeaturesView, InversionView
    from cnnlens.zoo import shapes_model

    _, data = shapes
    model = shapes_model()
    alive = weakref.ref(model)
    for view_class in (FeaturesView, ClassesView, DreamView, InversionView):
        view = view_class(model, data, steps=5000)
        while view.runner._thread is None or not view.runner._busy:
            time.sleep(0.01)
        owned = widget_ids(view) | {p.model_id for p in view.panels}
        start = time.monotonic()
        view.close()
        assert time.monotonic() - start < 5 and cnnlens_threads() == []
        assert not owned & set(_instances)
    del view, model
    gc.collect()
    assert alive() is None


def test_dream_view_controls_reach_the_engine_and_the_dream_streams(shapes, monkeypatch):
    from cnnlens.widgets import DreamView, dream_view

    calls = recording(monkeypatch, dream_view, "deepdream")
    model, data = shapes
    view = DreamView(model, data, layer="stage3", steps=4, octaves=2)
    titles = titles_of(view.dream_panel)
    assert view.wait(60) and view.runner.last_error is None
    (image, target), options = calls[-1]
    assert target == "stage3" and torch.equal(image, data.images[0])  # unit -1: the layer's L2 norm
    assert options["steps"] == 4 and options["octaves"] == 2 and callable(options["partial"])
    assert any(t.startswith("dream of stage3 (L2) · octave 1/2, step 4/4 · objective ") for t in titles)
    assert view.dream_panel.title.startswith("dream of stage3 (L2) · 2 octaves × 4 steps · objective ")
    assert view.dream_panel.image != view.input_panel.image and view.dream_panel.shape == [64, 64]
    for control, value, key in ((view.octaves, 3, "octaves"), (view.octave_scale, 1.6, "octave_scale"),
                                (view.step_size, 3.0, "step_size"), (view.steps, 6, "steps")):
        calls.clear()
        control.value = value
        assert view.wait(60) and view.runner.last_error is None, key
        assert len(calls) == 1 and calls[0][1][key] == value, key
    view.unit.value = 5
    assert view.wait(60) and calls[-1][0][1].description == cl.channel("stage3", 5).description
    assert view.dream_panel.title.startswith("dream of stage3:5 · ")
    view.index.value = 4  # the dream follows the image picker
    assert view.wait(60) and torch.equal(calls[-1][0][0], data.images[4])
    assert view.filename() == "dream_stage3_5.png" and view.png()[:4] == b"\x89PNG"
    view.steps.value, view.octave_scale.value = 1, 2.0
    view.octaves.value = 8  # 64 px halved 7 times: below 16 px from the 4th octave down, left out and said so
    assert view.wait(60) and "3 of 8 octaves (smaller than 16 px left out)" in view.dream_panel.title
    view.close()


def test_a_synthesis_job_pauses_while_its_tab_is_left_and_goes_on_when_it_is_back(shapes):
    """Leaving the tab holds the job at its next step (the tab in view gets the CPU); coming back goes on from
    there, not from scratch; a paused job is still stopped by a newer one or by close()."""
    from cnnlens.widgets import FeaturesView

    model, data = shapes
    view = FeaturesView(model, data, layer="stage2", unit=3, steps=400, size=48, neighbours=0, active=False)
    titles = titles_of(view.image_panel)
    view.activate()
    start = time.monotonic()
    while not any(" · step " in t for t in titles) and time.monotonic() - start < 60:
        time.sleep(0.02)
    view.deactivate()
    time.sleep(0.3)  # let the job reach its next step and stop there
    held = len(titles)
    time.sleep(1.0)
    assert len(titles) == held and view.runner.paused and not view.wait(0.2)  # no step while away
    view.activate()
    assert view.wait(60) and view.runner.completed == 1 and len(view.result.history) == 400  # went on to the end
    view.deactivate()
    view.unit.value = 4  # while away: deferred, nothing runs
    view.activate()
    view.deactivate()  # the catch-up job pauses at once
    view.close()  # and close() still ends it
    assert view.runner.closed and view.runner._thread is None


def test_dream_stop_keeps_the_image_dreamed_so_far(shapes):
    from cnnlens.widgets import DreamView

    model, data = shapes
    view = DreamView(model, data, steps=500, octaves=3, active=False)
    titles = titles_of(view.dream_panel)
    view.activate()
    start = time.monotonic()
    while not any("octave 1/3" in t for t in titles) and time.monotonic() - start < 60:
        time.sleep(0.02)
    view.dream_panel._message(view.dream_panel, {"type": "stop"}, [])
    assert view.wait(30) and view.dream_panel.status == "idle"
    assert "stopped at octave 1/3, step " in view.dream_panel.title and not view.save.disabled
    view.close()


def test_inversion_view_reconstructs_across_depth_with_errors(shapes, monkeypatch):
    from cnnlens.widgets import InversionView, inversion_view

    calls = recording(monkeypatch, inversion_view, "invert")
    model, data = shapes
    view = InversionView(model, data, steps=40)
    titles = titles_of(view.panel)
    assert view.layers.value == ("stage1", "stage2", "stage3", "stage4")
    assert view.wait(120) and view.runner.last_error is None
    (image, layers), options = calls[-1]
    assert layers == ["stage1", "stage2", "stage3", "stage4"] and options["steps"] == 40
    assert torch.equal(image, data.images[0])
    assert any(" · step 20/40" in t for t in titles)  # streamed while converging
    assert view.panel.title == "stage1 · stage2 · stage3 · stage4 (shallow → deep) · 40 steps"
    assert view.panel.shape == [64, 4 * 64 + 3 * 2]
    scale = view.input_panel.size / 64  # every reconstruction drawn at the input's scale
    assert view.panel.size == round(scale * (4 * 64 + 3 * 2))
    errors = view.result.history[-1].tolist()
    assert [name for name, _ in view.errors.bars] == list(layers)
    assert [e for _, e in view.errors.bars] == pytest.approx(errors)
    calls.clear()
    view.layers.value = ("stage4", "stage2.conv1", "fc")  # chosen in any order: drawn shallow to deep
    assert view.wait(120) and view.runner.last_error is None
    assert calls[-1][0][1] == ["stage2.conv1", "stage4", "fc"] and view.panel.shape == [64, 3 * 64 + 2 * 2]
    view.steps.value = 20
    assert view.wait(120) and calls[-1][1]["steps"] == 20
    before = len(calls)
    view.layers.value = ()
    assert view.wait(60) and len(calls) == before
    assert view.panel.status == "error" and "at least one layer" in view.panel.error
    view.layers.value = ("stage1",)
    assert view.wait(60) and view.panel.status == "idle" and view.panel.shape == [64, 64]
    assert view.panel.size == view.input_panel.size
    assert view.filename() == "inversion_stage1.png"
    view.close()


def test_synthesis_views_leave_the_model_as_it_was(shapes):
    from cnnlens.widgets import ClassesView, DreamView, FeaturesView, InversionView
    from cnnlens.zoo import shapes_model

    _, data = shapes
    model = shapes_model().train()  # mid-training: BatchNorm in train mode, a gradient present
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [(m.training, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
             for m in model.modules()]
    for view in (FeaturesView(model, data, steps=8, size=32), ClassesView(model, data, steps=8),
                 DreamView(model, data, steps=2, octaves=2), InversionView(model, data, steps=8)):
        assert view.wait(60) and view.runner.last_error is None, view.runner.last_error
        view.close()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert flags == [(m.training, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
                     for m in model.modules()]
    assert torch.equal(model.fc.weight.grad, torch.ones_like(model.fc.weight))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "fc.weight")
    assert all(p.requires_grad for p in model.parameters())


def test_lens_dataset_tabs_share_one_scan_link_units_and_build_filters_on_first_open(shapes, monkeypatch):
    from cnnlens.widgets import scan_views

    scans = recording(monkeypatch, scan_views, "scan")
    model, data = shapes
    lens = cl.Lens(model, data)
    top, class_images = lens.views["Top images"], lens.views["Class images"]
    assert "Filters" not in lens.views and lens.wait(60) and scans == []  # closed tabs compute nothing
    lens.views["Activations"].layer.value = "stage3"
    assert lens.wait(60)
    lens.views["Activations"].grid.selected = 5  # a click on feature map 5 moves the Top images unit too
    assert (top.layer.value, top.unit.value) == ("stage3", 5)
    lens.tabs.selected_index = lens.titles.index("Top images")
    assert lens.wait(120) and len(scans) == 1 and top.runner.last_error is None
    lens.tabs.selected_index = lens.titles.index("Class images")
    assert lens.wait(120) and len(scans) == 1 and class_images.runner.last_error is None  # the same scan
    lens.tabs.selected_index = lens.titles.index("Filters")  # built now, with the Lens' images
    assert "Filters" in lens.views and lens.tabs.children[lens.titles.index("Filters")] is lens.views["Filters"]
    assert lens.wait(120) and lens.views["Filters"].runner.last_error is None
    first = top._shown[top.patches]
    top.patches.selected = 2  # a click on a top image makes it the current image
    assert lens.index.value == first[2]
    lens.close()
    assert cnnlens_threads() == []


def test_a_lens_given_a_dataloader_looks_at_its_dataset():
    """A view picks images one at a time: a DataLoader (batches, not subscriptable) stands for its dataset."""
    from cnnlens.widgets.base import Images

    dataset = torch.utils.data.TensorDataset(torch.rand(6, 3, 16, 16), torch.arange(6) % 2)
    images = Images(torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=True), torch.nn.Identity())
    assert len(images) == 6
    image, label = images[5]
    assert torch.equal(image, dataset[5][0]) and label == 1
