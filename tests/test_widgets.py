"""The widget layer without a browser: live runner semantics, binary payloads, sizes, errors."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from torch import nn

import cnnlens as cl
from cnnlens.widgets import ActivationsView, AttributionView, DeconvView, OcclusionView, Panel
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
    runner = LiveRunner([Panel("heatmap")])
    published = []

    elapsed = []

    def streaming(progress, cancel, partial):
        start = time.monotonic()
        for i in range(30):
            partial(i)
            time.sleep(0.01)
        elapsed.append(time.monotonic() - start)
        return "final"

    runner.submit(streaming, published.append)
    assert runner.wait(10)
    assert published[0] == 0 and published[-1] == "final"
    partials = len(published) - 1
    assert 2 <= partials <= elapsed[0] / 0.1 + 1 < 30  # at most one partial per 0.1 s, far fewer than offered


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
    view.compare.value = ()
    assert view.wait(60) and view.panel.layout.display != "none"
    assert all(p.layout.display == "none" for p in view.compare_panels)


def test_a_label_map_over_1000_classes_lists_only_the_labels_present_in_distinct_colours():
    panel = Panel("labels")
    labels = torch.tensor([[5, 5, 900], [17, 5, 900]])
    panel.show_labels(labels, [f"class {i}" for i in range(1000)])
    assert [name for name, _ in panel.legend] == ["class 5", "class 17", "class 900"]
    assert len({tuple(color) for _, color in panel.legend}) == 3
    drawn = np.frombuffer(panel.heat, np.float32).reshape(2, 3)
    assert drawn.tolist() == [[0, 0, 2], [1, 0, 2]]  # indices into the legend


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
    assert [v.runner.last_error for v in lens.views.values()] == [None] * 4
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
