"""The training monitor (issue 8, section 4): records against brute force, harmless to training, its view."""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cnnlens as cl
from cnnlens.dataset.monitor import Monitor
from cnnlens.widgets.monitor_view import MonitorView, in_field, shown_records

from .conftest import assert_unchanged, random_model, snapshot
from .test_invariants import MidTraining

UNITS = ["stage1:0", "stage2:3", "stage3:5", cl.channel("stage4", 7)]


@pytest.fixture(scope="module")
def shapes():
    return cl.zoo.shapes(48)


def brute_force_strongest(model: torch.nn.Module, images: torch.Tensor, layer: str, unit: int):
    """(value, image, y, x) of a unit's largest activation: a plain forward hook on an eval-mode copy."""
    twin = copy.deepcopy(model).eval()
    out = {}
    dict(twin.named_modules())[layer].register_forward_hook(lambda m, i, o: out.__setitem__("a", o.detach()))
    with torch.no_grad():
        twin(images)
    a = out["a"][:, unit]
    flat = a.reshape(-1)
    top = int(flat.argmax())
    h, w = a.shape[1:]
    return float(flat[top]), top // (h * w), top % (h * w) // w, top % w


def test_records_match_brute_force_and_cl_deconvnet(shapes):
    model, data = shapes
    monitor = cl.monitor(model, UNITS, data, batch_size=20)  # chunks of 20: the best must carry across chunks
    record = monitor.step()
    assert record is monitor.records[-1] and record.step == 1
    for unit, found in zip(monitor.units, record.units):
        value, image, y, x = brute_force_strongest(model, data.images, unit.layer, unit.unit)
        assert (found.image, found.y, found.x) == (image, y, x), found.unit
        assert found.activation == pytest.approx(value, rel=1e-5)
        # the same unit projected by cl.deconvnet on that image alone: same location, box and pixels
        reference = cl.deconvnet(model, data.images[image], unit)
        assert reference.location.tolist() == [y, x]
        assert tuple(reference.patch.tolist()) == found.box
        y0, y1, x0, x1 = found.box
        torch.testing.assert_close(found.projection, reference.raw[:, y0:y1, x0:x1], rtol=1e-4, atol=1e-5)
        outside = reference.raw.clone()
        outside[:, y0:y1, x0:x1] = 0
        assert float(outside.abs().max()) == 0.0, "the projection reaches outside the receptive field"
        assert torch.equal(found.patch, data.images[image][:, y0:y1, x0:x1])
    conv = model.stage1.conv1.weight
    assert record.filters_layer == "stage1.conv1" and torch.equal(record.filters, conv.detach())


def test_records_on_a_random_torchvision_model():
    model = random_model("resnet18")
    images = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    monitor = cl.monitor(model, ["layer1:3", "layer3.0.conv1:7"], list(images))
    record = monitor.record()
    for unit, found in zip(monitor.units, record.units):
        value, image, y, x = brute_force_strongest(model, images, unit.layer, unit.unit)
        assert (found.image, found.y, found.x) == (image, y, x)
        assert found.activation == pytest.approx(value, rel=1e-4)
    assert record.filters_layer == "conv1" and record.filters.shape == (64, 3, 7, 7)


def test_large_crops_are_stored_downsampled(shapes):
    model, data = shapes
    full = cl.monitor(model, ["stage4:7"], data, crop_side=None).record().units[0]
    small = cl.monitor(model, ["stage4:7"], data, crop_side=16).record().units[0]
    assert max(full.patch.shape[-2:]) > 16 and max(small.patch.shape[-2:]) == 16
    assert small.box == full.box and small.projection.shape == small.patch.shape
    expected = F.interpolate(full.patch[None], size=small.patch.shape[-2:], mode="area")[0]
    torch.testing.assert_close(small.patch, expected)


def test_every_counts_calls_and_record_records_now(shapes):
    model, data = shapes
    monitor = cl.monitor(model, ["stage2:1"], data.images[:8], every=3)
    first = monitor.record()
    assert first.step == 0
    returned = [monitor.step() for _ in range(7)]
    assert [r is not None for r in returned] == [False, False, True, False, False, True, False]
    assert [r.step for r in monitor.records] == [0, 3, 6]
    # deterministic: the same weights give the same record
    again = cl.monitor(model, ["stage2:1"], data.images[:8]).record()
    assert torch.equal(again.units[0].projection, first.units[0].projection)


def _train(monitor_units=None, with_view=False, steps=10):
    """ShapesNet from a fixed seed, SGD with momentum, BatchNorm in train mode; optionally monitored."""
    torch.manual_seed(0)
    data = cl.zoo.ShapesDataset(96, seed=5)
    model = cl.zoo.ShapesNet()
    cl.configure(model, input_size=64, classes=cl.zoo.CLASSES)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    monitor = view = None
    if monitor_units is not None:
        monitor = cl.monitor(model, monitor_units, data.images[:16])
        view = MonitorView(monitor) if with_view else None
    model.train()
    for _ in range(steps):
        idx = torch.randperm(len(data))[:32]  # the global RNG: a monitor that consumed it would change this
        loss = F.cross_entropy(model(data.images[idx]), data.labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if monitor is not None:
            monitor.step()
            assert model.training and all(m.training for m in model.modules())
    return model, opt, torch.get_rng_state(), monitor, view


@pytest.mark.parametrize("with_view", [False, True])
def test_training_is_bitwise_identical_with_and_without_the_monitor(with_view):
    plain, plain_opt, plain_rng, _, _ = _train()
    watched, watched_opt, watched_rng, monitor, view = _train(UNITS, with_view)
    assert len(monitor.records) == 10
    assert torch.equal(plain_rng, watched_rng)
    for key, value in plain.state_dict().items():  # weights and BatchNorm running statistics
        assert torch.equal(value, watched.state_dict()[key]), key
    for p, q in zip(plain.parameters(), watched.parameters()):
        assert torch.equal(p.grad, q.grad)
    for p, q in zip(plain_opt.state_dict()["state"].values(), watched_opt.state_dict()["state"].values()):
        assert torch.equal(p["momentum_buffer"], q["momentum_buffer"])
    # the records follow training: the filters are copies taken at each step
    assert not torch.equal(monitor.records[0].filters, monitor.records[-1].filters)
    assert torch.equal(monitor.records[-1].filters, watched.stage1.conv1.weight.detach())
    if view is not None:
        assert view.unit_panels[0].results == 10
        view.close()


@pytest.mark.parametrize("arch", ["resnet18", "shapes"])
def test_model_untouched_mid_training(arch, shapes):
    model = random_model("resnet18") if arch == "resnet18" else cl.zoo.shapes_model()
    units = ["layer2:1", "layer4.1:5"] if arch == "resnet18" else UNITS
    images = shapes[1].images[:5]
    with MidTraining(model) as state:
        before = snapshot(model)
        rng = torch.get_rng_state()
        monitor = cl.monitor(model, units, images)
        view = monitor.view()
        monitor.step()
        monitor.step()
        token = cl.CancelToken()
        token.cancel()
        with pytest.raises(cl.Cancelled):
            monitor.step(cancel=token)
        assert_unchanged(model, before)
        assert state.fired == 0, "the user's hook fired: the monitor ran the user's modules"
        assert torch.equal(rng, torch.get_rng_state())
        view.close()


def test_progress_and_cancel(shapes):
    model, data = shapes
    monitor = cl.monitor(model, UNITS[:2], data, batch_size=16)
    seen = []
    monitor.step(progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    token = cl.CancelToken()

    def cancel_after_first(done, total):
        token.cancel()

    with pytest.raises(cl.Cancelled):
        monitor.step(progress=cancel_after_first, cancel=token)
    assert len(monitor.records) == 1 and monitor.calls == 2


@pytest.mark.parametrize("kwargs, error, words", [
    ({"units": ["nolayer:0"]}, ValueError, "stage4"),
    ({"units": ["stage2:99"]}, ValueError, "32 channels"),
    ({"units": ["fc:0"]}, ValueError, "spatial"),
    ({"units": [3]}, TypeError, "layer:unit"),
    ({"units": []}, TypeError, "non-empty"),
    ({"units": [cl.neuron("stage2", 1)]}, TypeError, "cl.channel"),
    ({"every": 0}, ValueError, "every"),
    ({"every": 1.5}, TypeError, "every"),
    ({"crop_side": 0}, ValueError, "crop_side"),
    ({"images": torch.zeros(0, 3, 64, 64)}, ValueError, "empty"),
    ({"images": 7}, TypeError, "images"),
    ({"filters": "stage1.bn1"}, ValueError, "Conv2d"),
    ({"filters": "nope"}, ValueError, "filters"),
])
def test_bad_arguments_name_the_argument_and_leave_the_model_alone(shapes, kwargs, error, words):
    model, data = shapes
    args = {"units": ["stage2:1"], "images": data.images[:4], **kwargs}
    before = snapshot(model)
    with pytest.raises(error, match=words):
        cl.monitor(model, **args)
    assert_unchanged(model, before)


def test_a_failed_record_shows_in_the_view_and_reaches_the_loop(shapes):
    model, data = shapes
    model = copy.deepcopy(model)
    monitor = cl.monitor(model, ["stage4:7"], data.images[:4])
    view = monitor.view()
    monitor.step()
    drawn = view.unit_panels[0].heat
    original, model.stage4 = model.stage4, torch.nn.Conv2d(64, 4, 1)  # the unit is gone
    with pytest.raises(ValueError, match="no longer exists"):
        monitor.step()
    assert "no longer exists" in view.header.error and view.unit_panels[0].heat == drawn
    assert len(monitor.records) == 1
    model.stage4 = original
    monitor.step()  # the next good record clears the error
    assert view.header.error == "" and len(monitor.records) == 2
    view.close()
    assert monitor._listeners == []


def test_a_diverged_model_is_reported_not_recorded(shapes):
    model, data = shapes
    model = copy.deepcopy(model)
    monitor = cl.monitor(model, ["stage1:0", "stage3:2"], data.images[:8])
    with torch.no_grad():
        model.stage2.conv1.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="stage3:2 has non-finite activations"):
        monitor.step()
    assert monitor.records == []


def test_view_shows_the_filters_change_on_one_scale(shapes):
    """Each filter scaled to its own range looks alike from step to step while training moves it: below the
    filters, their change since the first record on one shared scale (gray: none)."""
    model, data = shapes
    moved = copy.deepcopy(model)
    monitor = cl.monitor(moved, UNITS[:1], data.images[:4])
    view = MonitorView(monitor, columns=3)
    monitor.step()
    with torch.no_grad():
        moved.stage1.conv1.weight[0] += 0.05  # one filter moves (as an optimizer step would, in place)
    monitor.step()
    count, h, w, channels = view.filters.shape
    tiles = np.frombuffer(view.filters.heat, np.float32).reshape(count, channels, h, w)
    first_change, last_change = tiles[2], tiles[3]  # row 2: the changes, step 1 then step 2
    assert np.allclose(first_change[first_change != 1.0], 0.5)  # no change yet: all gray (white margins aside)
    moved_pixels = np.isclose(last_change, 0.9)  # the moved filter, at the scale's end, short of white
    assert moved_pixels.any() and np.allclose(last_change[~moved_pixels & (last_change != 1.0)], 0.5)
    assert "change since step" in view.filters.title
    view.close()


def test_view_controls_and_layout(shapes):
    model, data = shapes
    monitor = cl.monitor(model, UNITS[:2], data.images[:8])
    view = MonitorView(monitor, columns=3)
    assert view.unit_panels[0].results == 0  # nothing recorded yet: nothing drawn, the status says what to do
    assert "monitor.step()" in view.status.value
    for _ in range(5):
        monitor.step()
    panel = view.unit_panels[1]
    assert panel.shape == [6, 64, 64, 3] and panel.columns == 3  # projections over patches, 3 steps
    assert view.header.tile_names == view.header.captions == ["step 1", "step 3", "step 5"]
    assert view.filters.shape == [6, 64, 64, 3]  # the filters over their change since the first record
    sizes = {p.size for p in view.panels}
    assert len(sizes) == 1, "columns must line up across panels"
    view.show.value = "patch"
    assert panel.shape == [3, 64, 64, 3]
    view.columns.value = 5
    assert panel.shape == [5, 64, 64, 3] and view.header.tile_names[-1] == "step 5"
    assert panel.results == 5 + 2  # five records, two control changes
    view.close()
    monitor.step()  # a closed view is no longer told
    assert panel.results == 7


def test_helpers():
    records = list(range(10))
    assert shown_records(records, 4) == [0, 3, 6, 9]
    assert shown_records(records, 1) == [9]
    assert shown_records(records[:3], 8) == [0, 1, 2]
    crop = torch.rand(3, 4, 6)  # a field of 8×8 clipped by the image's top-left corner: (−4, 4, −2, 6)
    placed = in_field(crop, (0, 4, 0, 6), (-4, 4, -2, 6), 0.5)
    assert placed.shape == (3, 8, 8) and torch.equal(placed[:, 4:, 2:], crop)
    assert (placed[:, :4] == 0.5).all() and (placed[:, :, :2] == 0.5).all()
    halved = in_field(crop[:, ::2, ::2], (0, 4, 0, 6), (-4, 4, -2, 6), 0.0)  # a downsampled crop keeps its scale
    assert halved.shape == (3, 4, 4) and torch.equal(halved[:, 2:, 1:], crop[:, ::2, ::2])
    assert torch.equal(in_field(crop, (0, 4, 0, 6), (0, 4, 0, 6), 0.5), crop)
    with pytest.raises(TypeError, match="Monitor"):
        MonitorView("not a monitor")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_the_gpu(shapes):
    model, data = shapes
    model = model.cuda()
    monitor = cl.monitor(model, UNITS, data)
    record = monitor.record()
    assert all(u.projection.device.type == "cpu" for u in record.units) and record.filters.device.type == "cpu"
    cpu = Monitor(model.cpu(), UNITS, data).record()
    for a, b in zip(record.units, cpu.units):
        assert (a.image, a.y, a.x) == (b.image, b.y, b.x)


def test_recording_loads_no_widget_layer():
    """A script that only records never imports ipywidgets/anywidget (only ``monitor.view()`` does)."""
    script = ("import sys, torch, cnnlens as cl\n"
              "model, data = cl.zoo.shapes(8)\n"
              "cl.monitor(model, ['stage2:1'], data).step()\n"
              "print(sorted(m for m in ('ipywidgets', 'anywidget', 'matplotlib.pyplot') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
