"""Occlusion by incremental inference (issue 9): the same maps as full re-inference, on any traceable model,
with a safe fall-back; and the approximate modes with their measured quality."""

from __future__ import annotations

import contextlib
import math
import weakref

import pytest
import torch
import torchvision

import cnnlens as cl
from cnnlens.explain import incremental as engine_module
from cnnlens.explain import incremental_graph as graph_module
from cnnlens.explain import occlusion_run

from .conftest import assert_unchanged, random_model, snapshot

MAPS = ("unit_map", "drop_map", "log_map", "mean_map")


def _assert_same_maps(fast, full, tolerance: float = 1e-5) -> None:
    """Every continuous map within ``tolerance`` × its range (issue 9's bar), the label maps equal."""
    pairs = [("map", fast.map, full.map)] + [(k, fast.extras[k], full.extras[k]) for k in MAPS if k in full.extras]
    for key, a, b in pairs:
        a, b = a.double(), b.double()
        span = b.amax((-2, -1)) - b.amin((-2, -1))
        difference = (a - b).abs().amax((-2, -1))
        error = float(torch.where(span > 0, difference / span, difference * math.inf).nan_to_num(0.0).max())
        assert error <= tolerance, (key, error)
    assert torch.equal(fast.extras["label_map"], full.extras["label_map"])
    assert torch.equal(fast.extras["label_grid"], full.extras["label_grid"])


@contextlib.contextmanager
def _threads(count: int):
    """torch on ``count`` threads inside (oneDNN's kernels, and so the bits, depend on it), as before after."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _both_ways(model: torch.nn.Module) -> tuple:
    """(incremental, full) occlusion of ``model`` at 80 px on a random image: 12 px mask, stride 6 (169
    positions, in batches of 64 and a last short one)."""
    cl.configure(model, input_size=80)
    x = torch.rand(3, 80, 80, generator=torch.Generator().manual_seed(1))
    return tuple(cl.occlusion(model, x, 3, mask_size=12, stride=6, incremental=way) for way in (True, False))


@pytest.mark.parametrize(("mask_size", "stride", "mask_value"),
                         [(16, 2, "gray"), (13, 5, "blur"), (8, 8, "mean"), (21, 6, 0.3), (48, 1, "zero")])
def test_the_default_model_gives_the_full_maps(default, mask_size, stride, mask_value):
    model, data = default
    images = data.images[:2]
    fast = cl.occlusion(model, images, data.labels[:2].tolist(), mask_size=mask_size, stride=stride,
                        mask_value=mask_value, incremental=True)
    full = cl.occlusion(model, images, data.labels[:2].tolist(), mask_size=mask_size, stride=stride,
                        mask_value=mask_value, incremental=False)
    assert fast.params["inference"] == "incremental" and full.params["inference"] == "full"
    _assert_same_maps(fast, full)


def test_a_mask_over_the_whole_image_is_one_position(default):
    model, data = default
    fast = cl.occlusion(model, data.images[0], 2, mask_size=64, incremental=True)
    full = cl.occlusion(model, data.images[0], 2, mask_size=64, incremental=False)
    assert fast.params["inference"] == "incremental" and fast.raw.numel() == 1
    torch.testing.assert_close(fast.map, full.map, rtol=1e-5, atol=0)


@pytest.mark.parametrize("name", ["resnet18", "vgg16", "alexnet", "mobilenet_v3_small", "densenet121",
                                  "shufflenet_v2_x0_5"])
def test_torchvision_architectures_at_224_give_the_full_maps(name):
    """Residual adds, strided 1×1 shortcuts, max/avg pooling, squeeze-and-excitation (global context inside the
    network), dense concatenation, a channel shuffle that views its input by its own size (the batch of
    positions, not the clean run's 1): each at 224 px, bitwise or within float32 rounding of the plain
    forward."""
    model = random_model(name)
    x = torch.rand(3, 224, 224, generator=torch.Generator().manual_seed(1))
    fast = cl.occlusion(model, x, 3, mask_size=16, stride=52, incremental=True)
    full = cl.occlusion(model, x, 3, mask_size=16, stride=52, incremental=False)
    assert fast.params["inference"] == "incremental"
    _assert_same_maps(fast, full)


@pytest.mark.parametrize(("name", "mask_size", "stride", "mask_value"),
                         [("resnet18", 23, 37, "blur"), ("alexnet", 31, 41, "mean"), ("vgg16", 9, 71, 0.0)])
def test_other_masks_and_strides_at_224_give_the_full_maps(name, mask_size, stride, mask_value):
    """Odd mask sizes and strides (positions not aligned with any layer's stride), other fills."""
    model = random_model(name)
    x = torch.rand(3, 224, 224, generator=torch.Generator().manual_seed(2))
    fast = cl.occlusion(model, x, 5, mask_size=mask_size, stride=stride, mask_value=mask_value, incremental=True)
    full = cl.occlusion(model, x, 5, mask_size=mask_size, stride=stride, mask_value=mask_value, incremental=False)
    assert fast.params["inference"] == "incremental"
    _assert_same_maps(fast, full)


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2", "densenet121", "squeezenet1_1"])
def test_bottlenecks_depthwise_and_dense_layers_give_bitwise_the_full_maps_on_one_thread(name):
    """1×1 bottlenecks, depthwise convolutions, dense concatenation and fire modules on one thread, where
    oneDNN's kernels depend most on the batch's shape (these four differed by 8e-6–3e-5 of the map's range
    before the engine matched the plain forward's batches): bitwise equal maps, 169 positions."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
    with _threads(1):
        fast, full = _both_ways(model)
    assert fast.params["inference"] == "incremental" and fast.raw.numel() == 169
    assert torch.equal(fast.raw, full.raw)
    _assert_same_maps(fast, full, tolerance=0.0)


@pytest.mark.parametrize("name", ["regnet_y_400mf", "convnext_tiny"])
def test_a_short_last_batch_runs_in_the_plain_forwards_layout(name):
    """169 positions leave a last batch of 41, which the plain forward runs padded to its part size: run as
    41, the engine's full-map layers put the last position at the end of their tensors, where element-wise
    kernels take their scalar tail (squeeze-and-excitation's sigmoid, convnext's GELU) and differed in the last
    bits. The engine pads the batch alike: bitwise equal maps."""
    torch.manual_seed(0)
    fast, full = _both_ways(torchvision.models.get_model(name, weights=None, num_classes=10).eval())
    assert fast.params["inference"] == "incremental"
    assert torch.equal(fast.raw, full.raw)


def test_plain_calls_run_parts_of_one_size():
    """41 rows in plain calls of 16: 16, 16 and the last 9 padded to 16 with copies of the last row."""
    rows = torch.arange(41)[:, None]
    parts = list(engine_module.padded_parts(rows, 16))  # plain calls of exactly 16: the last padded, its 9 kept
    assert [(len(part), count) for part, count in parts] == [(16, 16), (16, 16), (16, 9)]
    assert torch.equal(parts[2][0][:9, 0], torch.arange(32, 41)) and bool((parts[2][0][9:, 0] == 40).all())


def test_no_position_is_computed_in_a_stray_batch_of_one():
    """169 positions in batches of 64 leave 41, which the plain forward ran in heap-sized parts of 20: 20, 20
    and a last position alone, whose first convolution (3→64 channels on 80×80) took another oneDNN kernel
    than the engine's batch of 41 and differed in the last bits of its probability. Plain calls of one size
    (16, the last part padded) keep every position's map bitwise that of the plain forward."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    fast, full = _both_ways(model)
    assert fast.params["inference"] == "incremental" and fast.raw.numel() == 169
    assert torch.equal(fast.raw, full.raw)


def test_the_clean_maps_are_those_of_a_batch_of_the_plain_forwards_size():
    """On one thread a 1×1 convolution 256→64 on 20×20 maps sums differently in a batch of 2 than of 64: the
    clean maps the engine reads around its rectangles must come from a batch of the plain forward's size, or
    the 3×3 convolution after it sees other bits at the rectangles' edges than the plain forward does."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 256, 4, stride=4), torch.nn.Conv2d(256, 64, 1), torch.nn.ReLU(),
                                torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    with _threads(1):
        fast, full = _both_ways(model)
    assert fast.params["inference"] == "incremental"
    assert torch.equal(fast.raw, full.raw)


def test_pointwise_convolutions_run_in_the_plain_forwards_batch_shape():
    """On one thread oneDNN blocks a 1×1 convolution (256→64 on 14×14 maps) by the batch: in batches of fewer
    than 16 maps it sums in another order. The engine packs a batch's rectangles into calls of the plain
    forward's own number of maps, so the pixels come out bitwise as there."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(256, 64, 1)
    maps = torch.randn(64, 256, 14, 14)
    with _threads(1), torch.no_grad():
        plain = conv(maps)[:, :, 3:7, 5:9]
        packed = engine_module._pointwise_conv(maps[:, :, 3:7, 5:9].contiguous(), conv, (14, 14), 64, (14, 14))
    assert torch.equal(packed, plain)


def test_strided_pointwise_convolutions_run_with_the_plain_forwards_stride():
    """A strided 1×1 convolution (resnet's downsample, 256→512, stride 2, 56×56 → 28×28) sums differently on
    one thread than the same weights unstrided on the pixels it reads: the engine places its pixels where the
    strided call reads them, in inputs of the layer's own input size."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(256, 512, 1, stride=2, bias=False)
    maps = torch.randn(10, 256, 56, 56)
    with _threads(1), torch.no_grad():
        plain = conv(maps)[:, :, 3:10, 5:12]
        packed = engine_module._pointwise_conv(maps[:, :, 6:20:2, 10:24:2].contiguous(), conv, (28, 28), 10,
                                               (56, 56))
    assert torch.equal(packed, plain)


def test_rectangles_that_cover_their_map_switch_to_full_maps(default):
    """Once a layer's rectangles have grown to its whole map (deep layers: the mask's projective field covers
    the image), the layers after it run on full maps, as after global pooling: no context is gathered around
    whole maps. The output stays that of the plain forward."""
    from cnnlens.core.session import look

    model, data = default
    x = data.images[3][None]
    starts = torch.tensor([[0, 0], [24, 24], [48, 40]])
    kinds: dict[str, str] = {}
    with look(model) as s, torch.no_grad():
        engine = engine_module.Incremental(s.net, graph_module.graph_of(s.net, s._shared), None)
        net_x = s.net_input(x)
        engine.clean(net_x)
        step = engine._step

        def recorded(node, env):
            value = step(node, env)
            kinds[node.name] = type(value).__name__
            return value

        engine._step = recorded
        crops = torch.full((len(starts), 3, 16, 16), 0.3)
        out, _ = engine.run(starts[:, 0], starts[:, 1], crops, None)
        occluded = net_x.repeat(len(starts), 1, 1, 1)
        for i, (y, x0) in enumerate(starts.tolist()):
            occluded[i, :, y:y + 16, x0:x0 + 16] = 0.3
        torch.testing.assert_close(out, s.net(occluded), rtol=0, atol=1e-6)
    order = [name for name, kind in kinds.items() if kind in ("Region", "Full")]
    first_full = next(i for i, name in enumerate(order) if kinds[name] == "Full")
    assert kinds[order[0]] == "Region" and order[first_full].startswith(("stage3", "stage4"))  # before the pooling
    assert all(kinds[name] == "Full" for name in order[first_full:])


def test_an_untraceable_model_runs_in_full():
    class Branchy(torch.nn.Module):  # data-dependent control flow: torch.fx cannot trace it
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.head = torch.nn.Linear(4, 3)

        def forward(self, x):
            y = self.conv(x)
            if y.mean() > 0:
                y = y.relu()
            return self.head(y.mean((2, 3)))

    model = Branchy().eval()
    x = torch.rand(3, 32, 32)
    result = cl.occlusion(model, x, 0, mask_size=8, stride=4)
    assert result.params["inference"] == "full"
    torch.testing.assert_close(result.map, cl.occlusion(model, x, 0, mask_size=8, stride=4, incremental=False).map)


@pytest.mark.parametrize("faster", [0.0, math.inf])
def test_auto_times_a_batch_where_the_work_saved_is_modest(default, monkeypatch, faster):
    """Where the engine saves some work but not clearly enough, "auto" runs the first batch in full too, timed,
    and keeps whichever was faster (``_FASTER``); the map is the full forward's either way."""
    model, data = default
    monkeypatch.setattr(occlusion_run, "_WORTH", math.inf)  # no saving is clear enough
    monkeypatch.setattr(occlusion_run, "_TIMED_FROM", 0.0)  # every saving is timed
    monkeypatch.setattr(occlusion_run, "_FASTER", faster)  # 0: the engine wins; inf: full re-inference wins
    monkeypatch.setattr(occlusion_run, "_DECISIONS", weakref.WeakKeyDictionary())  # nothing decided yet
    result = cl.occlusion(model, data.images[2], 1, mask_size=16, stride=6)
    assert result.params["inference"] == ("incremental" if faster == 0 else "full")
    monkeypatch.undo()
    full = cl.occlusion(model, data.images[2], 1, mask_size=16, stride=6, incremental=False)
    torch.testing.assert_close(result.map, full.map, rtol=0, atol=1e-6)
    torch.testing.assert_close(result.extras["unit_map"], full.extras["unit_map"], rtol=0, atol=1e-5)


def test_an_engine_that_disagrees_with_the_plain_forward_hands_over_to_it(default, monkeypatch):
    """A trace can freeze behaviour it cannot see (state read at trace time): the first batch's check catches a
    wrong engine, and the whole map is the plain forward's."""
    model, data = default
    run = engine_module.Incremental.run

    def wrong(self, *args, **kwargs):
        out, total = run(self, *args, **kwargs)
        return out + 0.5, total

    monkeypatch.setattr(engine_module.Incremental, "run", wrong)
    result = cl.occlusion(model, data.images[0], 1, mask_size=16, stride=8, incremental=True)
    assert result.params["inference"] == "full (the incremental engine disagreed)"
    monkeypatch.undo()
    torch.testing.assert_close(result.map, cl.occlusion(model, data.images[0], 1, mask_size=16, stride=8,
                                                        incremental=False).map)


def test_an_activation_target_runs_in_full_and_bad_settings_name_themselves(default):
    model, data = default
    result = cl.occlusion(model, data.images[0], "stage3:5", mask_size=16, stride=16)
    assert result.params["inference"] == "full"
    with pytest.raises(ValueError, match="incremental"):
        cl.occlusion(model, data.images[0], incremental="sometimes")
    with pytest.raises(ValueError, match="tau"):
        cl.occlusion(model, data.images[0], tau=1.5)


def test_tau_caps_the_recomputed_field_and_one_is_exact(default):
    model, data = default
    x = data.images[4]
    exact = cl.occlusion(model, x, int(data.labels[4]), mask_size=12, stride=4, incremental=True)
    whole = cl.occlusion(model, x, int(data.labels[4]), mask_size=12, stride=4, tau=1.0)
    _assert_same_maps(whole, exact)
    capped = cl.occlusion(model, x, int(data.labels[4]), mask_size=12, stride=4, tau=0.5)
    assert not torch.equal(capped.map, exact.map)  # an approximation: values outside the cap stay clean
    drop, approx = exact.extras["drop_map"], capped.extras["drop_map"]
    # (a capped map depends on which positions share a batch: one rectangle size per batch, the largest of its
    # positions'; on this image 0.84 in batches of 64, 64, 64, 4, 0.80 in 64, 64, 34, 34 and 0.78 in four of 49)
    assert torch.corrcoef(torch.stack([drop.flatten(), approx.flatten()]))[0, 1] > 0.7


def test_quality_picks_the_drill_down_share_from_sampled_positions(default):
    """``quality`` asks for an SSIM against the exact map: the calibration computes the coarse grid and a sample
    of the other positions exactly, picks the smallest drill-down share whose expected SSIM reaches the ask
    (with a margin), and reports it; a finer grid where every 4th position is too coarse; the exact map where
    nothing is enough."""
    from cnnlens.explain.position_grid import SHARES, grid_ssim
    model, data = default
    smooth = 9  # a held-out image whose map interpolates well
    x, label = data.images[smooth], int(data.labels[smooth])
    exact = cl.occlusion(model, x, label, mask_size=16, stride=2)
    fast = cl.occlusion(model, x, label, mask_size=16, stride=2, quality=0.9)
    assert fast.params["calibration"] == "refine from sampled positions" and fast.params["refine"] in SHARES
    assert fast.params["drill"] == 4
    assert fast.params["refine"] <= 0.3 and fast.params["ssim"] >= 0.95
    assert grid_ssim(fast.raw.numpy(), exact.raw.numpy()) >= 0.9  # on the whole grid, against the exact map
    assert not torch.equal(fast.raw, exact.raw)  # an approximation...
    span = float(exact.raw.max() - exact.raw.min())  # (batches of other positions may move the last bits)
    torch.testing.assert_close(fast.raw[::4, ::4], exact.raw[::4, ::4], rtol=0, atol=1e-6 * span)  # ...exact
    # where computed
    again = cl.occlusion(model, x, label, mask_size=16, stride=2, quality=0.9)
    assert torch.equal(again.raw, fast.raw) and again.params == fast.params  # the calibration is deterministic
    strict = cl.occlusion(model, x, label, mask_size=16, stride=2, quality=0.999)
    assert strict.params["refine"] > fast.params["refine"] and strict.params["ssim"] >= 0.9995
    assert grid_ssim(strict.raw.numpy(), exact.raw.numpy()) >= 0.99
    rough = 11  # a held-out image whose map does not interpolate from every 4th position: every 2nd
    x, label = data.images[rough], int(data.labels[rough])
    answer = cl.occlusion(model, x, label, mask_size=16, stride=2, quality=0.9)
    reference = cl.occlusion(model, x, label, mask_size=16, stride=2).raw
    assert answer.params["drill"] == 2 and answer.params["refine"] in SHARES
    assert grid_ssim(answer.raw.numpy(), reference.numpy()) >= 0.9
    torch.manual_seed(0)
    untrained = type(model)().eval()  # its map is rough at every scale: nothing is enough, the exact map
    answer = cl.occlusion(untrained, data.images[1], 0, mask_size=16, stride=2, quality=0.9)
    reference = cl.occlusion(untrained, data.images[1], 0, mask_size=16, stride=2).raw
    assert answer.params["refine"] is None and answer.params["calibration"] == "exact"
    torch.testing.assert_close(answer.raw, reference, rtol=0, atol=1e-5 * float(reference.max() - reference.min()))
    with pytest.raises(ValueError, match="quality"):
        cl.occlusion(model, x, quality=1.5)


def test_first_order_estimates_at_cuts_are_gradient_times_change(default):
    """At every cut (a node all of the network's later work depends on), the engine's first-order estimate
    is the clean gradient of the objective there times the change the mask makes to that node's output."""
    from cnnlens.core.session import look

    model, data = default
    x = data.images[3][None]
    starts = torch.tensor([[0, 0], [20, 30], [48, 48]])
    with look(model) as s, torch.no_grad():
        graph = graph_module.graph_of(s.net, s._shared)
        engine = engine_module.Incremental(s.net, graph, None)
        engine.clean(s.net_input(x))
        engine.slope(lambda out: torch.log_softmax(out.double(), 1)[0, 2])
        names = [n.name for n in engine.cuts]
        assert {"stage1_relu1", "stage1_pool", "stage2_relu1", "stage4_relu1"} <= set(names)
        assert "stage1_conv1" not in names and "stage1_bn1" not in names  # the ReLU after them estimates more
        net_x = s.net_input(x)
        fill = torch.full_like(net_x[0], 0.3)
        crops = torch.stack([fill[:, y:y + 16, x0:x0 + 16] for y, x0 in starts.tolist()])
        engine.run(starts[:, 0], starts[:, 1], crops, None, estimate_at=engine.cuts)
        assert {n.name for n in engine.linear} == set(names) - {"gap", "flatten", "fc"}  # cuts with a map
        occluded = net_x.repeat(len(starts), 1, 1, 1)
        for i, (y, x0) in enumerate(starts.tolist()):
            occluded[i, :, y:y + 16, x0:x0 + 16] = 0.3
        net = s.net
        cut = next(n for n in engine.linear if n.name == "stage2_relu1")
        clean_at_cut = net.stage2[:3](net.stage1(net.normalize(net_x)))
        with torch.enable_grad():
            a = clean_at_cut.clone().requires_grad_(True)
            rest = net.stage4(net.stage3(net.stage2[3:](a)))
            log_p = torch.log_softmax(net.fc(torch.flatten(net.gap(rest), 1)).double(), 1)[0, 2]
            grad, = torch.autograd.grad(log_p, a)
        change = net.stage2[:3](net.stage1(net.normalize(occluded))) - clean_at_cut
        expected = (change * grad).flatten(1).sum(1).double()
        torch.testing.assert_close(engine.linear[cut], expected, rtol=1e-4, atol=1e-7)
        out, _ = engine.run(starts[:, 0], starts[:, 1], crops, None, stop=cut, estimate_at=[cut])  # up to it only
        assert out is None and list(engine.linear) == [cut]
        torch.testing.assert_close(engine.linear[cut], expected, rtol=1e-4, atol=1e-7)
        # a run's own cap (the calibration's probe) is that of an engine made with it, and leaves the engine's
        engine.run(starts[:, 0], starts[:, 1], crops, None, stop=cut, estimate_at=[cut], tau=0.3)
        capped_run = engine.linear[cut].clone()
        capped = engine_module.Incremental(s.net, graph, None, 0.3)
        capped.clean(net_x)
        capped.slopes = engine.slopes
        capped.run(starts[:, 0], starts[:, 1], crops, None, stop=cut, estimate_at=[cut])
        torch.testing.assert_close(capped_run, capped.linear[cut], rtol=0, atol=0)
        assert not torch.allclose(capped_run, expected, rtol=1e-3, atol=1e-6)  # the cap changed the estimate
        engine.run(starts[:, 0], starts[:, 1], crops, None, stop=cut, estimate_at=[cut])
        torch.testing.assert_close(engine.linear[cut], expected, rtol=1e-4, atol=1e-7)


def test_quality_is_reached_where_the_sample_underestimated_the_errors(default):
    """Two maps the calibration once left below the asked 0.9 (0.895 and 0.896, expected 0.95): a sample's
    mean square of heavy-tailed errors falls short of the truth more often than not, so the errors' size is
    taken one standard error above it (``ERROR_BOUND``). A random mobilenet_v3_small on noise at 112 px, and
    one of the default model's held-out images."""
    from cnnlens.explain.position_grid import grid_ssim
    torch.manual_seed(1)
    mobilenet = torchvision.models.mobilenet_v3_small(weights=None).eval()
    cl.configure(mobilenet, input_size=112)
    noise = torch.rand(3, 112, 112, generator=torch.Generator().manual_seed(7))
    shapes, data = default
    for model, x, target, stride in ((mobilenet, noise, 7, 4), (shapes, data.images[-4], int(data.labels[-4]), 2)):
        exact = cl.occlusion(model, x, target, mask_size=16, stride=stride, incremental=True)
        answer = cl.occlusion(model, x, target, mask_size=16, stride=stride, quality=0.9)
        assert answer.params["refine"] is not None  # an approximation, not the exact map
        assert grid_ssim(answer.raw.numpy(), exact.raw.numpy()) >= 0.9


def test_quality_on_a_large_map_may_stand_a_first_order_estimate_in(default):
    """From 1,000 positions the calibration also scores first-order estimates at the network's cuts plus
    the interpolated departure from them, and keeps the cheapest way that is expected to reach the quality."""
    from cnnlens.explain.position_grid import grid_ssim
    model, data = default
    x, label = data.images[44], int(data.labels[44])  # a held-out image whose estimate is cheaper than interpolation
    exact = cl.occlusion(model, x, label, mask_size=8, stride=1)  # 57 × 57 positions
    model.fc.weight.grad = torch.ones_like(model.fc.weight)  # a gradient of the user's own, to be left alone
    before = snapshot(model)
    fast = cl.occlusion(model, x, label, mask_size=8, stride=1, quality=0.9)
    assert_unchanged(model, before)  # the slope's backward reaches no parameter
    model.fc.weight.grad = None
    assert fast.params["cut"] == "stage2_relu1" and fast.params["calibration"].startswith("first-order")
    assert grid_ssim(fast.raw.numpy(), exact.raw.numpy()) >= 0.9
    assert 0 <= float(fast.raw.min()) and float(fast.raw.max()) <= 1  # estimated or not, a probability
    assert fast.params["sampled"] <= occlusion_run._SAMPLE_MOST * len(occlusion_run._DRILLS)
    again = cl.occlusion(model, x, label, mask_size=8, stride=1, quality=0.9)
    assert torch.equal(again.raw, fast.raw) and again.params == fast.params


def test_expected_ssim_is_scaled_by_the_range_known_exactly():
    """An estimate's outlier (a probability above 1, say) must not widen the range SSIM's constants are scaled
    by: the same noise then looks smaller and the calibration would promise too much."""
    from cnnlens.explain.position_grid import noisy_ssim
    grid = 0.4 + 0.2 * torch.rand(20, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grid[3, 3] = 2.0  # an estimated position far outside the exact values' range
    flat, sampled = torch.arange(400), torch.arange(0, 400, 10)
    errors = torch.full((len(sampled),), 0.02, dtype=torch.float64)
    widened = noisy_ssim(grid, flat, flat, sampled, errors, float(grid.max() - grid.min()))
    known = noisy_ssim(grid, flat, flat, sampled, errors, 0.2)
    assert known < widened - 0.01


def test_a_bound_on_the_errors_size_lowers_the_expected_ssim_most_where_they_are_heavy_tailed():
    """With ``bound``, each rank group's noise is one standard error of its mean square larger: a few large
    errors among many small ones (a sample whose mean square likely falls short) are bounded further up."""
    from cnnlens.explain.position_grid import noisy_ssim
    grid = torch.rand(20, 20, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    flat, sampled = torch.arange(400), torch.arange(0, 400, 5)
    even = torch.full((len(sampled),), 0.15, dtype=torch.float64)
    heavy = torch.zeros(len(sampled), dtype=torch.float64)
    heavy[::10] = 0.15 * math.sqrt(10)  # the same mean square, in a tenth of the samples
    scores = {name: [noisy_ssim(grid, flat, flat, sampled, errors, 1.0, bound=bound) for bound in (0.0, 1.0)]
              for name, errors in (("even", even), ("heavy", heavy))}
    assert scores["even"][0] == pytest.approx(scores["even"][1])  # no spread: nothing to bound
    assert scores["heavy"][0] == pytest.approx(scores["even"][0], abs=0.02)  # the same size without a bound
    assert scores["heavy"][1] < scores["heavy"][0] - 0.02


def test_ssim_of_maps_that_vary_far_less_than_their_level_is_stable():
    """A random network's class probability can be 1e-3 ± 1e-10 over the positions: SSIM's variances then
    cancelled to noise (values of ±10⁷ were reported). Its value is that of the same maps at a level that
    float64 holds exactly (a thousand ranges: there the luminance term is 1 within 1e-6)."""
    from cnnlens.explain.position_grid import grid_ssim
    g = torch.Generator().manual_seed(0)
    exact = torch.rand(30, 30, generator=g, dtype=torch.float64)
    approx = exact + 0.2 * torch.randn(30, 30, generator=g, dtype=torch.float64)
    span = float(exact.max() - exact.min())
    held = grid_ssim((1e3 * span + approx).numpy(), (1e3 * span + exact).numpy())
    assert 0.3 < held < 0.95
    for level, scale in ((1e-3, 1e-10), (5.0, 1e-9), (-2.0, 1e-8)):
        moved = grid_ssim((level + scale * approx).numpy(), (level + scale * exact).numpy())
        assert moved == pytest.approx(held, abs=1e-4)


def test_a_network_the_slope_cannot_run_through_keeps_plain_interpolation(default, monkeypatch):
    from cnnlens.explain.position_grid import grid_ssim

    def fails(self, objective):
        raise RuntimeError("shape '[1, 2, 24, 28, 28]' is invalid")  # as shufflenet's channel shuffle once did

    monkeypatch.setattr(engine_module.Incremental, "slope", fails)
    model, data = default
    x, label = data.images[5], int(data.labels[5])
    exact = cl.occlusion(model, x, label, mask_size=8, stride=1)
    result = cl.occlusion(model, x, label, mask_size=8, stride=1, quality=0.9)
    assert result.params["cut"] is None and result.params["inference"] == "incremental"
    assert grid_ssim(result.raw.numpy(), exact.raw.numpy()) >= 0.9


def test_drill_down_computes_the_coarse_grid_then_the_busiest_cells(default):
    """``refine``: every 4th position per side first (exact, interpolated between), then the given share of
    the positions in the cells whose corners differ most; refine=1 computes every position."""
    model, data = default
    x, label = data.images[5], int(data.labels[5])
    exact = cl.occlusion(model, x, label, mask_size=16, stride=2)  # 25 × 25 positions
    counts = {}
    results = {}
    for share in (0.0, 0.3, 1.0):
        seen = []
        results[share] = cl.occlusion(model, x, label, mask_size=16, stride=2, refine=share,
                                      progress=lambda done, total, seen=seen: seen.append(done))
        counts[share] = seen[-1]
    assert counts[0.0] == 7 * 7 and counts[0.3] == 49 + math.ceil(0.3 * 625) and counts[1.0] == 625
    torch.testing.assert_close(results[1.0].raw, exact.raw)
    coarse = exact.raw[::4, ::4]
    torch.testing.assert_close(results[0.0].raw[::4, ::4], coarse)  # the coarse positions are exact
    errors = {share: float((r.raw - exact.raw).abs().max()) for share, r in results.items()}
    assert errors[0.3] < errors[0.0]
    with pytest.raises(ValueError, match="refine"):
        cl.occlusion(model, x, refine=2)


def test_tracing_leaves_forwards_in_other_threads_alone():
    """fx patches nn.Module.__call__ process-wide while it traces; cnnlens confines that to the tracing thread,
    so a training loop or another view running meanwhile neither breaks nor leaks into the graph (with plain
    ``torch.fx.symbolic_trace`` here, thousands of the other thread's forwards fail with a NameError)."""
    import copy
    import threading

    model = random_model("resnet18")
    copies = [copy.deepcopy(model) for _ in range(20)]
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    x = torch.rand(1, 3, 32, 32)
    stop, errors, runs = threading.Event(), [], [0]

    def loop():
        while not stop.is_set():
            try:
                other(x)
                runs[0] += 1
            except Exception as error:  # noqa: BLE001 - collected and asserted below
                errors.append(error)

    reference = len(torch.fx.symbolic_trace(copy.deepcopy(model)).graph.nodes)
    thread = threading.Thread(target=loop)
    thread.start()
    try:
        sizes = {len(graph_module._traced_in_this_thread(net).nodes) for net in copies}
    finally:
        stop.set()
        thread.join()
    assert sizes == {reference}  # nothing from the other thread's forwards
    assert not errors and runs[0] > 0


def test_the_engine_leaves_a_model_mid_training_untouched_also_when_cancelled():
    """Train mode, gradients, a user's hook and the RNG stay as they were: after exact, capped, drilled and
    quality runs, and after a run cancelled halfway through."""
    model = cl.zoo.shapes_model().train()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    model(x).sum().backward()  # .grad tensors exist, as in a training loop
    seen = []
    model.stage2.register_forward_hook(lambda *_: seen.append(1))
    before, rng = snapshot(model), torch.get_rng_state()
    for options in ({"incremental": True}, {"tau": 0.5}, {"refine": 0.3}, {"quality": 0.9}):
        cl.occlusion(model, x[0], 1, mask_size=16, stride=4, **options)
    token = cl.CancelToken()
    with pytest.raises(cl.Cancelled):
        cl.occlusion(model, x, 1, mask_size=8, stride=2, incremental=True, batch_size=16,
                     progress=lambda done, total: token.cancel() if done > 40 else None, cancel=token)
    assert_unchanged(model, before)
    assert torch.equal(torch.get_rng_state(), rng) and not seen  # the user's hook never saw cnnlens' forwards
