"""Filter health: planted duplicates, rotated copies, opposite pairs and dead units are found, exactly.

Faults are planted in copies of the trained default and of a randomly
initialised ResNet-18; the report must list the planted findings and nothing
else at the default thresholds. The kernel comparison is checked against a
brute-force loop over pairs and transforms in float64, the dead-unit pass
against a plain forward over all the data, and the call against the
invariants (a model mid-training is left bitwise unchanged).
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

import cnnlens as cl
from cnnlens.core.session import STREAM_BLOCK
from cnnlens.dataset.health import TRANSFORMS, Pair, kernel_pairs
from cnnlens.widgets.health_view import kernel_image

from .conftest import assert_unchanged, forwards_in_parts, random_model, snapshot
from .test_invariants import MidTraining, _assert_no_hooks_left


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def noisy(w: torch.Tensor, scale: float = 0.03) -> torch.Tensor:
    """``w`` plus Gaussian noise of ``scale`` times its RMS (cosine with ``w`` stays above ~0.99); the noise is
    seeded by the kernel's own values, so every planted copy is reproducible."""
    seed = int(w.double().abs().sum() * 1e6) % 2**31
    return w + scale * w.pow(2).mean().sqrt() * torch.randn(w.shape, generator=gen(seed))


def brute_force(layer: str, weight: torch.Tensor, duplicate=0.95, rotated=0.95, opposite=0.9):
    """The rules of cnnlens.dataset.health, one pair and one transform at a time, in float64."""
    w = weight.detach().double()
    flat = w.flatten(1)
    zero = flat.norm(dim=1) <= 1e-8 * flat.norm(dim=1).max()
    h, wd = w.shape[-2:]

    def cos(u, v):
        if u.norm() == 0 or v.norm() == 0:
            return 0.0
        return float(F.cosine_similarity(u.flatten(), v.flatten(), dim=0))

    dup, rot, opp = set(), {}, set()
    for a in range(len(w)):
        for b in range(a + 1, len(w)):
            if zero[a] or zero[b]:
                continue
            plain = cos(w[b], w[a])
            if plain >= duplicate:
                dup.add((a, b))
            if plain <= -opposite:
                opp.add((a, b))
            best = None
            for name, t in TRANSFORMS.items():
                if h * wd == 1 or (h != wd and name in ("rot90", "rot270", "transpose", "anti-transpose")):
                    continue
                if cos(w[a], t(w[a])) >= rotated:  # a is symmetric under t
                    continue
                value = cos(w[b], t(w[a]))
                if value >= rotated and (best is None or value > best[1]):
                    best = (name, value)
            if best is not None and plain < duplicate:
                rot[(a, b)] = best
    return dup, rot, opp, {int(u) for u in torch.nonzero(zero).flatten()}


def units(pairs) -> set[tuple[int, int]]:
    return {(a[1], b[1]) for a, b, _ in pairs}


def planted_weight() -> torch.Tensor:
    """24 random 3×5×5 kernels with every kind of relation planted, including symmetric kernels."""
    w = torch.randn(24, 3, 5, 5, generator=gen(0))
    w[1] = noisy(w[0])                         # duplicate
    w[3] = torch.rot90(w[2], 1, (-2, -1))      # rot90
    w[5] = noisy(w[4].flip(-1))                # flip-h with noise
    w[7] = noisy(w[6].transpose(-2, -1))       # transpose
    w[9] = -w[8]                               # opposite
    w[10] = w[10] + w[10].flip(-1)             # symmetric under flip-h ...
    w[11] = noisy(w[10], 0.05)                 # ... and its near-duplicate: a duplicate, not "rotated"
    w[12] = 0                                  # zero kernel
    w[14] = torch.rot90(w[13], 2, (-2, -1))    # rot180
    w[15] = -noisy(w[13])                      # opposite of 13 (and rot180-opposite of 14: not reported)
    return w


def test_kernel_pairs_agree_with_brute_force():
    w = planted_weight()
    dup, rot, opp, zero = kernel_pairs("L", w, 0.95, 0.95, 0.9)
    ref_dup, ref_rot, ref_opp, ref_zero = brute_force("L", w)
    assert units(dup) == ref_dup == {(0, 1), (10, 11)}
    assert units(opp) == ref_opp == {(8, 9), (13, 15)}
    assert {(p.a[1], p.b[1]): p.transform for p in rot} == {k: v[0] for k, v in ref_rot.items()} == {
        (2, 3): "rot90", (4, 5): "flip-h", (6, 7): "transpose", (13, 14): "rot180"}
    assert set(torch.nonzero(zero).flatten().tolist()) == ref_zero == {12}
    for p in rot:
        assert p.similarity == pytest.approx(ref_rot[(p.a[1], p.b[1])][1], abs=1e-5)
    for p in dup + opp:  # similarity is the plain cosine of the pair
        assert p.similarity == pytest.approx(float(F.cosine_similarity(w[p.a[1]].flatten(), w[p.b[1]].flatten(),
                                                                       dim=0)), abs=1e-5)
    assert all(p.transform == "identity" for p in dup) and all(p.transform == "negated" for p in opp)


@pytest.mark.parametrize("shape,thresholds", [((40, 2, 3, 3), (0.6, 0.6, 0.55)), ((30, 4, 1, 3), (0.6, 0.65, 0.55)),
                                              ((20, 8, 1, 1), (0.5, 0.5, 0.5))])
def test_kernel_pairs_random_layers_at_low_thresholds(shape, thresholds):
    """Many chance findings in small kernels: every rule, non-square and 1×1 kernels, match brute force."""
    w = torch.randn(shape, generator=gen(1))
    dup, rot, opp, _ = kernel_pairs("L", w, *thresholds)
    ref_dup, ref_rot, ref_opp, _ = brute_force("L", w, *thresholds)
    assert units(dup) == ref_dup and units(opp) == ref_opp
    assert {(p.a[1], p.b[1]): p.transform for p in rot} == {k: v[0] for k, v in ref_rot.items()}
    assert len(dup) + len(rot) + len(opp) > 0, "the thresholds should find something to compare"
    if shape[-1] * shape[-2] == 1:
        assert not rot
    if shape[-2] != shape[-1]:
        assert {p.transform for p in rot} <= {"rot180", "flip-h", "flip-v"}


@pytest.fixture(scope="module")
def shapes():
    model, data = cl.zoo.shapes()
    return model, data


def plant_shapes(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the default with faults planted in stage1.conv1 and stage3.conv1."""
    sick = copy.deepcopy(model)
    with torch.no_grad():
        w = sick.stage1.conv1.weight
        w[5] = noisy(w[2])
        w[7] = torch.rot90(w[3], 1, (-2, -1))
        w[9] = noisy(w[4].flip(-2))
        w[11] = -w[6]
        sick.stage1.bn1.weight[13] = 0.0  # BatchNorm output -1 everywhere: never positive
        sick.stage1.bn1.bias[13] = -1.0
        w[14] = 0.0                       # a zero kernel: responds to nothing
        w3 = sick.stage3.conv1.weight
        w3[40] = noisy(w3[10])
        w3[41] = -noisy(w3[20])
        w3[42] = w3[30].transpose(-2, -1)
        sick.stage3.bn1.bias[50] = -100.0
    return sick


def test_planted_faults_in_the_default_are_found_exactly(shapes):
    model, data = shapes
    healthy = cl.filter_health(model, data, layer="all")
    assert not (healthy.dead or healthy.duplicates or healthy.rotated or healthy.opposite), healthy
    sick = plant_shapes(model)
    report = cl.filter_health(sick, data, layer="stage3.conv1", batch_size=100)
    assert report.layers == ["stage1.conv1", "stage3.conv1"]
    assert report.units == {"stage1.conv1": 16, "stage3.conv1": 64}
    assert report.measured_at == {"stage1.conv1": "stage1.bn1", "stage3.conv1": "stage3.bn1"}
    assert report.images == len(data)
    assert report.dead == [("stage1.conv1", 13), ("stage1.conv1", 14), ("stage3.conv1", 50)]
    assert [(a, b) for a, b, _ in report.duplicates] == [(("stage1.conv1", 2), ("stage1.conv1", 5)),
                                                         (("stage3.conv1", 10), ("stage3.conv1", 40))]
    assert {(a, b, p.transform) for p in report.rotated for a, b in [p[:2]]} == {
        (("stage1.conv1", 3), ("stage1.conv1", 7), "rot90"), (("stage1.conv1", 4), ("stage1.conv1", 9), "flip-v"),
        (("stage3.conv1", 30), ("stage3.conv1", 42), "transpose")}
    assert [(a, b) for a, b, _ in report.opposite] == [(("stage1.conv1", 6), ("stage1.conv1", 11)),
                                                       (("stage3.conv1", 20), ("stage3.conv1", 41))]
    assert report.opposite[0].similarity == pytest.approx(-1.0, abs=1e-6)
    assert all(s >= 0.95 for *_, s in report.duplicates + report.rotated)
    found = report.findings("stage1.conv1")
    assert found[13] == [("dead", None, None, "")] and found[7][0][:2] == ("rotated", 3)
    text = repr(report)
    assert "stage1.conv1 (16 units): 2 dead, 1 duplicates, 2 rotated, 1 opposite" in text
    assert "3~7 +1.000 rot90" in text


def test_dead_units_match_a_plain_forward_over_the_data(shapes):
    """The streamed running max equals the max of the BatchNorm output computed in one go, for any batch size."""
    model, data = shapes
    sick = plant_shapes(model)
    images = torch.stack([data[i][0] for i in range(120)])
    outputs = {}
    reference = copy.deepcopy(sick).eval()
    reference.stage1.bn1.register_forward_hook(lambda m, i, o: outputs.__setitem__("s1", o.clone()))
    reference.stage3.bn1.register_forward_hook(lambda m, i, o: outputs.__setitem__("s3", o.clone()))
    with torch.no_grad():
        reference(images)
    cl.filter_health(sick, images[:2], layer=["stage3.conv1"])  # the layer table's probe forwards, cached
    for batch_size, part in ((7, None), (120, None), (120, 9)):  # 9: forwards in heap-sized parts (patched)
        with pytest.MonkeyPatch.context() as patch:
            sizes = forwards_in_parts(patch, part)
            report = cl.filter_health(sick, images, layer=["stage3.conv1"], batch_size=batch_size)
        streamed = min(batch_size, STREAM_BLOCK // (16 * 64 * 64 * 4))  # the largest output: 16 maps of 64×64
        assert max(sizes) == (part or streamed) and sum(sizes) == 120
        torch.testing.assert_close(report.peak["stage1.conv1"], outputs["s1"].amax((0, 2, 3)))
        torch.testing.assert_close(report.peak["stage3.conv1"], outputs["s3"].amax((0, 2, 3)))
        assert report.images == 120
    expected = {("stage1.conv1", u) for u in torch.nonzero(outputs["s1"].amax((0, 2, 3)) <= 0).flatten().tolist()}
    expected |= {("stage3.conv1", u) for u in torch.nonzero(outputs["s3"].amax((0, 2, 3)) <= 0).flatten().tolist()}
    assert set(report.dead) == expected | {("stage1.conv1", 14)}


def test_data_forms_give_the_same_report(shapes):
    model, data = shapes
    sick = plant_shapes(model)
    subset = torch.utils.data.Subset(data, range(64))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.stack([data[i][0] for i in range(64)])),
                                         batch_size=10)
    reports = [cl.filter_health(sick, source) for source in (subset, loader, [data[i][0] for i in range(64)])]
    for r in reports[1:]:
        assert r.dead == reports[0].dead and r.images == 64
        torch.testing.assert_close(r.peak, reports[0].peak)


def test_without_data_only_zero_kernels_are_dead(shapes):
    sick = plant_shapes(shapes[0])
    report = cl.filter_health(sick)
    assert report.layers == ["stage1.conv1"] and report.images == 0 and not report.activity_checked
    assert report.dead == [("stage1.conv1", 14)]
    assert report.peak == {} and "activity not checked" in repr(report)
    assert len(report.duplicates) == len(report.opposite) == 1 and len(report.rotated) == 2


def test_random_resnet_with_planted_faults():
    model = copy.deepcopy(random_model("resnet18"))
    with torch.no_grad():
        w = model.conv1.weight  # 64×3×7×7
        w[10] = noisy(w[1])
        w[11] = torch.rot90(w[2], 3, (-2, -1))
        w[12] = noisy(w[3].transpose(-2, -1))
        w[13] = -w[4]
        model.bn1.bias[20] = -1e3
        inner = model.layer2[0].conv2.weight  # 128×128×3×3
        inner[100] = noisy(inner[7])
        inner[101] = inner[8].flip(-1)
    x = torch.rand(6, 3, 64, 64, generator=gen(2))
    before = snapshot(model)
    report = cl.filter_health(model, x, layer=model.layer2[0].conv2)
    assert_unchanged(model, before)
    assert report.layers == ["conv1", "layer2.0.conv2"]
    assert report.measured_at == {"conv1": "bn1", "layer2.0.conv2": "layer2.0.bn2"}
    assert [unit for unit in report.dead if unit[0] == "conv1"] == [("conv1", 20)]
    # deeper, a random network has units that are negative on all these images: dead is exactly peak ≤ 0
    assert {u for name, u in report.dead if name != "conv1"} == set(
        torch.nonzero(report.peak["layer2.0.conv2"] <= 0).flatten().tolist())
    assert units(report.duplicates) == {(1, 10), (7, 100)}
    assert {(p.a[1], p.b[1], p.transform) for p in report.rotated} == {(2, 11, "rot270"), (3, 12, "transpose"),
                                                                      (8, 101, "flip-h")}
    assert units(report.opposite) == {(4, 13)}
    every = cl.filter_health(model, layer="all")
    assert len(every.layers) == 20 and every.layers[0] == "conv1"
    block = cl.filter_health(model, layer=["layer2", "layer2.0.conv2"])  # a block: every conv inside it, once
    assert block.layers == ["conv1", "layer2.0.conv1", "layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv1",
                            "layer2.1.conv2"]


def test_pair_is_the_documented_triple():
    pair = Pair(("c", 1), ("c", 4), 0.97, "rot90")
    a, b, similarity = pair
    assert (a, b, similarity) == (("c", 1), ("c", 4), 0.97) == pair
    assert pair.transform == "rot90" and pair.similarity == 0.97
    again = pickle.loads(pickle.dumps(pair))
    assert again == pair and again.transform == "rot90"


def test_model_mid_training_is_left_unchanged(shapes):
    sick = plant_shapes(shapes[0])
    expected = cl.filter_health(sick, shapes[1], layer="all")
    with MidTraining(sick) as state:
        before = snapshot(sick)
        rng = torch.get_rng_state()
        report = cl.filter_health(sick, shapes[1], layer="all")
        assert_unchanged(sick, before)
        assert state.fired == 0
        assert torch.equal(rng, torch.get_rng_state())
    _assert_no_hooks_left(sick)
    assert report.dead == expected.dead and report.duplicates == expected.duplicates  # eval-mode semantics
    torch.testing.assert_close(report.peak, expected.peak)


def test_progress_and_cancel(shapes):
    model, data = shapes
    seen = []
    cl.filter_health(model, data, layer="stage2.conv1", batch_size=100, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(i, 7) for i in range(1, 8)]  # 5 batches, then 2 layers
    token = cl.CancelToken()

    def stop(done, total):
        token.cancel()

    with MidTraining(model):
        before = snapshot(model)
        with pytest.raises(cl.Cancelled):
            cl.filter_health(model, data, batch_size=50, progress=stop, cancel=token)
        assert_unchanged(model, before)
    _assert_no_hooks_left(model)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"layer": "stage9.conv1"}, ValueError, r"not a layer of the model.*stage1.conv1.*'all'"),
    ({"layer": "stage1.bn1"}, ValueError, r"'stage1.bn1' is not a Conv2d layer and holds none.*stage2.conv2"),
    ({"layer": ["stage2", "fc"]}, ValueError, r"'fc' is not a Conv2d layer"),
    ({"layer": 3}, TypeError, r"layer must be a layer name"),
    ({"layer": torch.nn.Conv2d(3, 3, 3)}, ValueError, r"not a module of this model"),
    ({"duplicate": 0}, ValueError, r"duplicate must be a cosine similarity threshold in \(0, 1\]"),
    ({"rotated": 1.5}, ValueError, r"rotated must be"),
    ({"opposite": "0.9"}, TypeError, r"opposite must be a number"),
    ({"batch_size": 0}, ValueError, r"batch_size must be an int ≥ 1"),
    ({"data": torch.zeros(0, 3, 64, 64)}, ValueError, r"data is empty"),
    ({"data": 5}, TypeError, r"data must be a dataset"),
])
def test_bad_arguments_raise_clear_errors(shapes, kwargs, error, match):
    model = shapes[0]
    before = snapshot(model)
    with pytest.raises(error, match=match):
        cl.filter_health(model, **kwargs)
    assert_unchanged(model, before)


def test_a_model_without_convolutions_is_refused():
    with pytest.raises(ValueError, match="has no Conv2d layer"):
        cl.filter_health(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2)))


def test_view_marks_the_findings_and_follows_its_controls(shapes):
    from cnnlens.widgets import FilterHealthView

    sick = plant_shapes(shapes[0])
    view = FilterHealthView(sick, shapes[1])
    try:
        assert view.wait(60) and not view.grid.error
        assert view.grid.title == "stage1.conv1 · 16 filters · 2 dead · pairs: duplicate 1, rotated 2, opposite 1"
        assert view.grid.shape == [16, 57, 45, 3]
        tiles = torch.frombuffer(bytearray(view.grid.heat), dtype=torch.float32).view(16, 3, 57, 45)
        assert torch.allclose(tiles[2, :, 0, 0], torch.tensor([1.0, 0.45, 0.0]), atol=0.01)  # duplicate: orange
        assert torch.allclose(tiles[7, :, 0, 0], torch.tensor([0.0, 0.66, 0.3]), atol=0.01)  # rotated: green
        assert torch.allclose(tiles[0, :, 0, 0], torch.ones(3))  # nothing found: no frame
        top, left, h, w = view.grid.zoom_box  # the zoom enlarges the kernel, not its frame and caption strip
        kernels = kernel_image(sick.stage1.conv1.weight)
        assert (h, w) == (33, 33) and torch.allclose(
            tiles[:, :, top:top + h, left:left + w], F.interpolate(kernels, scale_factor=11), atol=1 / 255)
        assert view.grid.tile_names[7] == "unit 7: rotated copy (rot90) of 3: +1.000"
        assert "duplicate: 2~5 +1.000" in view.findings.value and "activity on 256 images" in view.findings.value
        view.grid.selected = 11
        assert "unit 11: opposite phase of 6: -1.000" in view.unit_info.value
        view.rotated.value = 0.5  # kernels compared again; the dead units measured on the images stay
        assert view.wait(60)
        assert len(view.report.rotated) == 5 and ("stage1.conv1", 13) in view.report.dead
        assert view.report.images == 256
        view.layer.value = "stage3.conv1"
        assert view.wait(60) and view.grid.shape == [64, 57, 45, 3]
        assert ("stage3.conv1", 50) in view.report.dead
    finally:
        view.close()
    assert view.closed
    bad = FilterHealthView(sick, torch.rand(4, 5, 64, 64))
    try:
        assert bad.wait(60) and "x has 5 channels" in bad.grid.error
    finally:
        bad.close()
    with pytest.raises(ValueError, match="Unknown layer 'stage9'. Conv2d layers: stage1.conv1, "):
        FilterHealthView(sick, layer="stage9")


def test_grouped_convolutions_pair_kernels_only_within_a_group():
    """Kernels of two groups read different input channels: a depthwise 1×1 layer's scalars all came out as
    ±1.000 duplicates and opposites (random mobilenet_v2: 23 / 202 / 474 false pairs, all depthwise)."""
    conv = torch.nn.Conv2d(4, 8, 3, groups=2)
    with torch.no_grad():
        conv.weight[1] = conv.weight[0]  # same group (units 0–3): a duplicate
        conv.weight[5] = conv.weight[0]  # another group: the same numbers on other channels, no pair
        conv.weight[6] = -conv.weight[4]  # same group (units 4–7): opposite
        conv.weight[7] = conv.weight[2].flip(-1)  # a mirror of a kernel of the other group: no pair
    duplicates, rotated, opposite, _ = kernel_pairs("g", conv.weight, 0.99, 0.99, 0.99, groups=2)
    assert [(p.a[1], p.b[1]) for p in duplicates] == [(0, 1)]
    assert [(p.a[1], p.b[1]) for p in opposite] == [(4, 6)] and rotated == []
    depthwise = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 1, groups=8),
                                    torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3))
    report = cl.filter_health(depthwise, layer="2")  # (and the first layer, which is not grouped)
    assert not [p for p in report.duplicates + report.rotated + report.opposite if p.a[0] == "2"]
