"""Occlusion: bounded memory, streaming coarse to fine at no extra cost (issue 6, part 5)."""

from __future__ import annotations

import sys
import threading

import psutil
import pytest
import torch

import cnnlens as cl
from cnnlens.core.session import HEAP_BLOCK, Session, look

from .conftest import forwards_in_parts, random_model

occlusion_module = sys.modules["cnnlens.explain.occlusion"]  # (the package exports the function by that name)
plain_batch = occlusion_module.plain_batch


def test_streaming_hands_over_coarser_maps_first_and_costs_no_extra_forward():
    model = random_model("resnet18")
    x = torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(0))
    totals, partials = [], []
    final = cl.occlusion(model, x, 1, mask_size=24, stride=8, progress=lambda done, total: totals.append(total),
                         partial=partials.append)
    alone = cl.occlusion(model, x, 1, mask_size=24, stride=8)
    torch.testing.assert_close(final.map, alone.map)
    strides = [p.params["stride"] for p in partials]
    assert strides == sorted(strides, reverse=True) and len(strides) >= 2 and all(s > 8 for s in strides)
    assert set(totals) == {10 * 10}  # only the final grid's positions are ever computed
    coarse = partials[0]
    ys, xs = coarse.positions
    assert len(ys) == 2 and len(xs) == 2
    assert coarse.map.shape == final.map.shape


def _peak_rss_during(fn) -> tuple[float, object]:
    process = psutil.Process()
    base = process.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            done.wait(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        result = fn()
    finally:
        done.set()
        thread.join()
    return (peak[0] - base) / 2**20, result


def test_memory_is_bounded_by_the_batch_not_the_number_of_positions():
    """160 px at stride 2 is 5,041 positions: storing a window per position would take over 1 GB."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3),
                                torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 3)).eval()
    x = torch.rand(3, 160, 160, generator=torch.Generator().manual_seed(0))
    grown, result = _peak_rss_during(lambda: cl.occlusion(model, x, mask_size=20, stride=2, batch_size=32))
    assert result.raw.shape == (71, 71)
    assert grown < 250, f"occlusion grew the process by {grown:.0f} MB"


def test_smoothgrad_streams_its_running_mean_and_ends_where_it_would_without_streaming():
    model = random_model("resnet18")
    x = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(2))
    partials = []
    final = cl.smoothgrad(model, x, 1, samples=10, batch_size=4, seed=0, partial=partials.append)
    alone = cl.smoothgrad(model, x, 1, samples=10, batch_size=4, seed=0)
    torch.testing.assert_close(final.map, alone.map)
    assert [p.params["samples"] for p in partials] == [4, 8]
    assert not torch.equal(partials[0].map, final.map)


def test_cpu_batches_keep_the_largest_activation_within_one_heap_block(default):
    """resnet18 at 224 px: conv1's 64×112×112 floats (3.2 MB an image) make 10 images a block; the default
    model's small maps keep the 64 asked for."""
    with look(random_model("resnet18")) as s:
        assert s.batch_in_heap((224, 224), 64) == HEAP_BLOCK // (64 * 112 * 112 * 4) == 10
        assert s.batch_in_heap((224, 224), 4) == 4
    with look(default[0]) as s:
        assert s.batch_in_heap((64, 64), 64) == 64


def test_plain_forwards_run_in_heap_sized_parts_of_at_least_eight(monkeypatch):
    monkeypatch.setattr(Session, "batch_in_heap", lambda self, size, most: 3)
    with look(random_model("resnet18")) as s:
        assert plain_batch(s, (224, 224), 64) == 8  # never fewer: a linear layer reads its weights per part
        assert plain_batch(s, (224, 224), 4) == 4  # never more than the batch
    monkeypatch.setattr(Session, "batch_in_heap", lambda self, size, most: 12)
    with look(random_model("resnet18")) as s:
        assert plain_batch(s, (224, 224), 64) == 12


def test_plain_forwards_run_in_parts_and_agree_with_the_engine_bitwise(monkeypatch):
    """A batch of 64 positions runs as forwards of at most the part's size (3 here) in full re-inference,
    and the engine runs its linear layer in the same parts: a matrix product of one or two rows sums
    differently from one of four, so without the parts the maps would differ in the last bits."""
    monkeypatch.setattr(occlusion_module, "plain_batch", lambda session, size, batch_size: 3)
    sizes: list[int] = []
    logits = Session.logits
    monkeypatch.setattr(Session, "logits", lambda self, x: sizes.append(len(x)) or logits(self, x))
    model = random_model("vgg16")
    x = torch.rand(3, 224, 224, generator=torch.Generator().manual_seed(4))
    full = cl.occlusion(model, x, 3, mask_size=16, stride=26, incremental=False)  # 9 × 9 = 81 positions
    assert sizes[0] == 1 and max(sizes[1:]) == 3 and sum(sizes[1:]) == 81
    fast = cl.occlusion(model, x, 3, mask_size=16, stride=26, incremental=True)
    assert fast.params["inference"] == "incremental"
    assert torch.equal(fast.raw, full.raw)
    whole = cl.occlusion(model, x, 3, mask_size=16, stride=26, incremental=False, batch_size=64)
    torch.testing.assert_close(whole.raw, full.raw, rtol=1e-4, atol=0)  # the same map, up to float32 sums


@pytest.mark.parametrize("method", ["integrated_gradients", "smoothgrad"])
def test_gradient_paths_run_in_heap_sized_batches_by_default(default, monkeypatch, method):
    """Without a ``batch_size``, Integrated Gradients' path points and SmoothGrad's samples go through forward
    and backward in the session's heap-sized batches (5 here), with the result of batches of 64."""
    model, data = default
    x = data.images[3]
    kwargs = {"steps": 12} if method == "integrated_gradients" else {"samples": 12, "seed": 0}
    whole = getattr(cl, method)(model, x, 1, batch_size=64, **kwargs)
    sizes = forwards_in_parts(monkeypatch, 5)
    parts = getattr(cl, method)(model, x, 1, **kwargs)
    assert sizes[-3:] == [5, 5, 2]
    torch.testing.assert_close(parts.raw, whole.raw, rtol=1e-4, atol=1e-6)


def test_lime_runs_its_samples_in_heap_sized_forwards(default, monkeypatch):
    """LIME's batches of samples (the live view refits after each) go through the model in the session's
    heap-sized parts (5 here, patched): the same fitted weights as whole batches."""
    model, data = default
    x = data.images[3]
    whole = cl.lime(model, x, 1, samples=40, batch_size=16, seed=0)
    sizes = forwards_in_parts(monkeypatch, 5)
    parts = cl.lime(model, x, 1, samples=40, batch_size=16, seed=0)
    assert sizes[-10:] == [5, 5, 5, 1, 5, 5, 5, 1, 5, 3]  # batches of 16, 16 and 8 in parts of 5
    torch.testing.assert_close(parts.extras["weights"][0], whole.extras["weights"][0], rtol=1e-4, atol=1e-6)
