"""cl.scan: one pass over a dataset, equal to brute force, mergeable, distributable, bounded (issue 8, part 1)."""

from __future__ import annotations

import copy
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, TensorDataset

import cnnlens as cl
from cnnlens.core.hooks import capture
from cnnlens.core.session import look

from .conftest import assert_unchanged, forwards_in_parts, random_model, snapshot

LAYERS = ["stage1.relu1", "stage2.conv2", "stage3", "stage4"]


@pytest.fixture(scope="module")
def shapes():
    model, data = cl.zoo.shapes(160)
    return model, data


def _brute_force(model, images, layers):
    """Every image's strongest activation and its first position, per layer and unit, from one capture."""
    with look(model) as s, torch.no_grad(), capture(s.net, layers) as cap:
        logits = s.logits(images)
        out = {name: cap[name].flatten(2).max(2) for name in layers}
    return out, torch.softmax(logits.double(), 1).float().double()  # the scan keeps float32 probabilities


def _ranked(values: torch.Tensor, k: int, descending: bool) -> list[int]:
    """The k best images for one unit: by value, ties by the lower index."""
    order = sorted(range(len(values)), key=lambda i: ((-1 if descending else 1) * float(values[i]), i))
    return order[:k]


def _assert_unit_lists(scan, brute: dict, k: int) -> None:
    """Every unit's top and bottom ``k``: the brute-force order (ties by index), values and first positions."""
    for name in scan.layers:
        values, positions = brute[name]
        width = scan.grid(name)[1]
        for unit in range(values.shape[1]):
            top, bottom = scan.top(name, unit), scan.bottom(name, unit)
            assert [h.index for h in top] == _ranked(values[:, unit].double(), k, True), (name, unit)
            assert [h.index for h in bottom] == _ranked(values[:, unit].double(), k, False), (name, unit)
            for hit in top + bottom:
                assert hit.value == pytest.approx(float(values[hit.index, unit]), abs=1e-6)
                assert hit.y * width + hit.x == int(positions[hit.index, unit]), (name, unit)


def test_the_scan_equals_a_brute_force_top_k(shapes):
    model, data = shapes
    images, labels = data.images, data.labels
    scan = cl.scan(model, data, LAYERS, k=5, batch_size=48)
    assert scan.layers == LAYERS and scan.count == len(images)
    brute, probs = _brute_force(model, images, LAYERS)
    _assert_unit_lists(scan, brute, 5)
    predictions = probs.argmax(1)
    for c in range(probs.shape[1]):
        assert [h.index for h in scan.class_top(c)] == _ranked(probs[:, c], 5, True)
        assert [h.index for h in scan.class_bottom(c)] == _ranked(probs[:, c], 5, False)
        wrong = [i for i in range(len(images)) if labels[i] != c and predictions[i] == c]
        expected = sorted(wrong, key=lambda i: (-float(probs[i, c]), i))[:5]
        assert [h.index for h in scan.class_wrong(c)] == expected
        for hit in scan.class_top(c):
            assert hit.label == int(labels[hit.index]) and hit.prediction == int(predictions[hit.index])
    assert scan.class_top("circle") == scan.class_top(0)


def test_every_default_layer_equals_the_brute_force_top_k(shapes):
    """All spatial layers at once, where the allocator reuses a freed activation's memory for a later layer of
    the same shape (a layer must never be mistaken for a copy of another) and in-place ReLUs overwrite the
    batch-norm outputs after their hooks ran."""
    model, data = shapes
    scan = cl.scan(model, data, k=3, batch_size=32)
    assert len(scan.layers) == 26
    _assert_unit_lists(scan, _brute_force(model, data.images, scan.layers)[0], 3)


def test_forwards_run_in_heap_sized_parts_with_the_lists_of_whole_batches(shapes, monkeypatch):
    """On the CPU a loaded batch goes through the model in parts whose largest activation fits one heap
    block (7 images here, patched): the lists, positions and class lists are those of whole batches."""

    model, data = shapes
    whole = cl.scan(model, data, LAYERS, k=4, batch_size=48)
    sizes = forwards_in_parts(monkeypatch, 7)
    parts = cl.scan(model, data, LAYERS, k=4, batch_size=48)
    assert max(sizes) == 7 and sum(sizes) == len(data.images) and sizes[:7] == [7] * 6 + [6]  # 48 = 6 × 7 + 6
    for name in LAYERS:
        for unit in range(parts.units(name)):
            assert parts.top(name, unit) == whole.top(name, unit) and parts.bottom(name, unit) == whole.bottom(
                name, unit)
    for c in range(len(data.classes)):
        assert parts.class_top(c) == whole.class_top(c) and parts.class_wrong(c) == whole.class_wrong(c)
    _assert_unit_lists(parts, _brute_force(model, data.images, LAYERS)[0], 4)


def test_channels_last_activations_give_the_same_lists(shapes):
    """A model run in channels-last memory format hands the hooks channels-last maps: lists, values and
    positions (row-major in the grid) are those of a brute force over the same model."""
    model, data = shapes
    strided = copy.deepcopy(model).to(memory_format=torch.channels_last)
    images = data.images.contiguous(memory_format=torch.channels_last)
    scan = cl.scan(strided, images, LAYERS, k=4, batch_size=40)
    _assert_unit_lists(scan, _brute_force(strided, images, LAYERS)[0], 4)


def test_ties_are_broken_by_the_lower_index():
    conv = torch.nn.Conv2d(3, 2, 1)
    model = torch.nn.Sequential(conv, torch.nn.ReLU()).eval()
    images = torch.rand(6, 3, 4, 4)
    images[[1, 3, 4]] = 0.0  # identical images: equal activations
    scan = cl.scan(model, images, ["0"], k=6, batch_size=2)
    for unit in range(2):
        for hits in (scan.top("0", unit), scan.bottom("0", unit)):
            tied_value = next(h.value for h in hits if h.index == 1)
            tied = [h.index for h in hits if h.value == tied_value]
            assert tied == sorted(tied) and {1, 3, 4} <= set(tied)


def test_a_module_called_twice_counts_its_last_call():
    """torchvision's BasicBlock calls one ReLU twice (after bn1, after the sum): the layer's output is the last
    call's, for the lists and the statistics alike, and the scan reduces only that call after the first batch.
    Images come in reverse order, so later batches hold lower indices (a dead unit's zeros tie)."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    cl.configure(model, input_size=32)
    images = torch.rand(40, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    layers = ["layer1.0.relu", "layer2.1.relu", "layer1.0"]
    order = list(range(len(images)))[::-1]
    scan = cl.scan(model, images, layers, k=4, batch_size=8, statistics=True, indices=order)
    last: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: last.__setitem__(n, o.detach().clone()))
               for n in layers]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    _assert_unit_lists(scan, {n: last[n].flatten(2).max(2) for n in layers}, 4)
    for name in layers:
        stats = scan.statistics(name)
        assert torch.allclose(stats.mean, last[name].double().mean((0, 2, 3)), atol=1e-9)
        assert torch.equal(stats.active_fraction, (last[name].flatten(2).amax(2) > 0).double().mean(0))


class _CallsVary(torch.nn.Module):
    """Calls its ReLU twice on bright batches and once on dark ones (data-dependent control flow)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.act = torch.nn.ReLU()
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        y = self.act(self.conv(x))
        if float(x.mean()) > 0.5:
            y = self.act(y - 0.1)
        return self.head(y.mean((2, 3)))


def test_a_module_called_fewer_times_on_a_later_batch_is_reduced_anyway():
    """The scan skips a module's earlier calls once the first batch has counted them; a batch that calls it
    fewer times is run again with every call reduced, so its lists still hold the last call's maxima."""
    torch.manual_seed(0)
    model = _CallsVary().eval()
    bright = torch.rand(8, 3, 8, 8) * 0.5 + 0.5
    dark = torch.rand(8, 3, 8, 8) * 0.5
    images = torch.cat([bright, dark, bright])
    scan = cl.scan(model, images, ["act"], k=3, batch_size=8)
    last = []
    handle = model.act.register_forward_hook(lambda m, i, o: last.append(o.detach().clone()))
    with torch.no_grad():
        outputs = [None] * 3
        for b in range(3):
            last.clear()
            model(images[8 * b:8 * b + 8])
            outputs[b] = last[-1]
    handle.remove()
    _assert_unit_lists(scan, {"act": torch.cat(outputs).flatten(2).max(2)}, 3)


def test_every_source_gives_the_same_scan(shapes):
    model, data = shapes
    subset = torch.arange(60)
    images, labels = data.images[subset], data.labels[subset]
    reference = cl.scan(model, TensorDataset(images, labels), LAYERS[-2:], k=4, batch_size=16)
    for source in (DataLoader(TensorDataset(images, labels), batch_size=7), [(im, int(lab)) for im, lab in
                                                                           zip(images, labels)]):
        other = cl.scan(model, source, LAYERS[-2:], k=4, batch_size=16)
        for name in reference.layers:
            for unit in range(reference.units(name)):
                assert other.top(name, unit) == reference.top(name, unit)
        for c in range(8):
            assert other.class_wrong(c) == reference.class_wrong(c)
    unlabelled = cl.scan(model, images, LAYERS[-1:], k=4)
    assert [(h.index, h.score) for h in unlabelled.class_top(0)] == [(h.index, h.score) for h in
                                                                     reference.class_top(0)]
    assert all(h.label is None for h in unlabelled.class_top(0)) and unlabelled.class_wrong(0) == []


def test_merge_of_disjoint_parts_equals_one_scan_and_save_load_round_trips(shapes, tmp_path):
    model, data = shapes
    full = cl.scan(model, data, LAYERS, k=5, statistics=True)
    halves = [cl.scan(model, data, LAYERS, k=5, statistics=True, indices=part)
              for part in (range(0, 70), range(70, 160))]
    assert [h.count for h in halves] == [70, 90]
    merged = cl.Scan.merge(halves)
    assert merged.count == full.count
    for name in LAYERS:
        for unit in range(full.units(name)):
            assert merged.top(name, unit) == full.top(name, unit)
            assert merged.bottom(name, unit) == full.bottom(name, unit)
        a, b = merged.statistics(name), full.statistics(name)
        assert torch.allclose(a.mean, b.mean) and torch.equal(a.active_fraction, b.active_fraction)
        assert torch.equal(a.quantile, b.quantile)
    for c in range(8):
        assert merged.class_top(c) == full.class_top(c) and merged.class_wrong(c) == full.class_wrong(c)
    with pytest.raises(ValueError, match="disjoint"):
        cl.Scan.merge([halves[0], halves[0]])
    with pytest.raises(ValueError, match="same settings"):
        cl.Scan.merge([halves[0], cl.scan(model, data, LAYERS, k=3, statistics=True, indices=range(70, 80))])
    path = tmp_path / "scan.npz"
    full.save(path)
    loaded = cl.Scan.load(path)
    assert loaded.layers == full.layers and loaded.count == full.count and loaded.class_names == full.class_names
    for name in LAYERS:
        assert [loaded.top(name, u) for u in range(8)] == [full.top(name, u) for u in range(8)]
        assert torch.equal(loaded.statistics(name).quantile, full.statistics(name).quantile)
    assert loaded.class_wrong(3) == full.class_wrong(3)


def test_statistics_match_their_definitions(shapes):
    model, data = shapes
    scan = cl.scan(model, data, ["stage2.conv2", "stage4"], statistics=True)
    with look(model) as s, torch.no_grad(), capture(s.net, ["stage2.conv2", "stage4"]) as cap:
        s.logits(data.images)
        for name in ("stage2.conv2", "stage4"):
            acts = cap[name].double()
            stats = scan.statistics(name)
            assert torch.allclose(stats.mean, acts.mean((0, 2, 3)), atol=1e-9)
            assert torch.equal(stats.active_fraction, (acts.flatten(2).amax(2) > 0).double().mean(0))
            exact = torch.quantile(acts.transpose(0, 1).flatten(1), 0.995, dim=1)
            # fixed bins in asinh space: a few percent of the value
            assert torch.allclose(stats.quantile, exact, rtol=0.05, atol=1e-3)


def test_memory_is_bounded_by_k_and_units_not_the_data(shapes):
    model, data = shapes
    small = cl.scan(model, data.images[:40], k=9, statistics=True)
    large = cl.scan(model, data, k=9, statistics=True)
    a, _ = small._arrays()
    b, _ = large._arrays()
    per_image = ("classes.images", "classes.predictions", "classes.labels")
    assert {key: v.shape for key, v in a.items() if key not in per_image} == \
        {key: v.shape for key, v in b.items() if key not in per_image}
    assert len(b["classes.images"]) <= 3 * 8 * 9  # at most the images the class lists hold


def test_the_model_is_untouched_and_bad_arguments_name_themselves(shapes):
    model = random_model("resnet18")
    model.train()
    model.layer1.register_forward_hook(lambda *a: None)
    before = snapshot(model)
    images = torch.rand(6, 3, 64, 64)
    scan = cl.scan(model, images, k=3)
    assert "layer4" in scan.layers and "conv1" in scan.layers and len(scan.top("layer4", 0)) == 3
    assert_unchanged(model, before)
    with pytest.raises(ValueError, match="layers"):
        cl.scan(model, images, ["layer9"])
    with pytest.raises(ValueError, match="k must be"):
        cl.scan(model, images, k=0)
    with pytest.raises(TypeError, match="data"):
        cl.scan(model, object())
    with pytest.raises(ValueError, match="unit must be"):
        scan.top("layer4", 512)
    with pytest.raises(ValueError, match="Scanned layers"):
        scan.top("fc", 0)
    with pytest.raises(ValueError, match="statistics"):
        scan.statistics("layer4")
    assert_unchanged(model, before)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model, data = cl.zoo.shapes(160)
        cl.scan(model, data, LAYERS, k=5, statistics=True).save(f"{out}/rank{rank}.npz")
    finally:
        dist.destroy_process_group()


def test_a_distributed_scan_equals_one_scan(shapes, tmp_path):
    """Two gloo processes on 127.0.0.1, each scanning its share: every rank returns the single-process scan."""
    model, data = shapes
    mp.spawn(_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    single = cl.scan(model, data, LAYERS, k=5, statistics=True)
    for rank in range(2):
        got = cl.Scan.load(tmp_path / f"rank{rank}.npz")
        assert got.count == single.count == len(data)
        for name in LAYERS:
            for unit in range(single.units(name)):
                assert got.top(name, unit) == single.top(name, unit)
                assert got.bottom(name, unit) == single.bottom(name, unit)
            assert torch.equal(got.statistics(name).quantile, single.statistics(name).quantile)
            assert torch.allclose(got.statistics(name).mean, single.statistics(name).mean)
        for c in range(8):
            assert got.class_top(c) == single.class_top(c) and got.class_wrong(c) == single.class_wrong(c)
    assert math.isfinite(single.top(LAYERS[0], 0)[0].value)


def test_a_container_and_its_last_layer_share_one_reduction_and_agree(shapes):
    """With the default layers, ``stage4`` (a container) outputs the very tensor of ``stage4.relu1``: the scan
    reduces it once and both lists equal those of a scan of each layer alone."""
    model, data = shapes
    everything = cl.scan(model, data.images[:100], k=4, batch_size=32)
    assert {"stage4", "stage4.relu1", "stage1", "stage1.pool"} <= set(everything.layers)
    for name in ("stage4", "stage4.relu1", "stage1", "stage1.pool", "stage2.bn1"):
        alone = cl.scan(model, data.images[:100], [name], k=4, batch_size=32)
        for unit in range(alone.units(name)):
            assert everything.top(name, unit) == alone.top(name, unit)
            assert everything.bottom(name, unit) == alone.bottom(name, unit)


class _SharedActivation(torch.nn.Module):
    """One ReLU module after every convolution, as many models are written: its calls differ in width and grid."""

    def __init__(self, second_channels: int):
        super().__init__()
        self.relu = torch.nn.ReLU()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, second_channels, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(second_channels, 5)

    def forward(self, x):
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("second_channels", [16, 8])
def test_a_shared_activation_of_other_widths_and_grids_is_its_last_call(second_channels):
    """The ReLU's output is its last call's (16×16 maps after the strided conv): with another width the first
    batch used to raise, with the same width the positions were decoded on the first call's 32-wide grid."""
    torch.manual_seed(0)
    model = _SharedActivation(second_channels).eval()
    images = torch.rand(20, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    scan = cl.scan(model, images, ["relu", "conv2"], k=3, batch_size=8)
    assert scan.grid("relu") == (16, 16) and scan.units("relu") == second_channels
    with torch.no_grad():
        conv2 = model.conv2(torch.relu(model.conv1(images)))
    _assert_unit_lists(scan, {"relu": torch.relu(conv2).flatten(2).max(2), "conv2": conv2.flatten(2).max(2)}, 3)
