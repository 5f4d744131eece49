"""Feature synthesis: activation maximization, class visualization and fooling images (issue 7, part 1–2)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import cnnlens as cl
from cnnlens.core.hooks import capture
from cnnlens.core.session import look

from .conftest import assert_unchanged, random_model, snapshot
from .test_invariants import MidTraining


@pytest.fixture(scope="module")
def shapes():
    return cl.zoo.shapes()


def _channel_means(model, images, layer):
    with look(model) as s, torch.no_grad(), capture(s.net, [layer]) as cap:
        s.logits(images)
        return cap[layer].flatten(2).mean(2)


def test_raw_ascent_beats_the_best_dataset_image_for_every_channel_of_the_last_stage(shapes):
    model, data = shapes
    channels = 128
    best = _channel_means(model, data.images, "stage4").amax(0)
    result = cl.visualize(model, [f"stage4:{c}" for c in range(channels)], preset="raw", steps=60, seed=0)
    reached = _channel_means(model, result.images, "stage4")[torch.arange(channels), torch.arange(channels)]
    assert bool((reached >= best - 1e-6).all()), torch.nonzero(reached < best).flatten().tolist()
    assert result.history.shape == (60, channels)
    assert bool((result.history[-1] > result.history[0]).any())


def test_raw_class_visualizations_are_fooling_images(shapes):
    """Nguyen et al. 2015: ≥ 99% confidence in every class from images that look like noise."""
    model, data = shapes
    result = cl.visualize(model, list(range(len(data.classes))), preset="raw", seed=0)
    assert result.confidence is not None and bool((result.confidence >= 0.99).all()), result.confidence
    assert [p[0].index for p in result.predictions] == list(range(len(data.classes)))
    assert result.target[3] == "logit(3: star)"
    by_name = cl.visualize(model, "star", preset="raw", seed=0, steps=20)
    assert by_name.target == ["logit(3: star)"]


def test_deterministic_for_a_seed_and_every_image_follows_its_own_target(shapes):
    model, _ = shapes
    a = cl.visualize(model, ["stage3:1", "stage3:2"], preset="lucid", steps=64, seed=3)
    b = cl.visualize(model, ["stage3:1", "stage3:2"], preset="lucid", steps=64, seed=3)
    c = cl.visualize(model, ["stage3:1", "stage3:2"], preset="lucid", steps=24, seed=4)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    acts = _channel_means(model, a.images, "stage3")
    assert acts[0, 1] > acts[1, 1] and acts[1, 2] > acts[0, 2]  # each image excites its own unit more


def test_starts_and_diversity(shapes):
    model, _ = shapes
    plain = cl.visualize(model, "stage3:4", preset="lucid", steps=32, starts=3, seed=0)
    diverse = cl.visualize(model, "stage3:4", preset="lucid", steps=32, starts=3, seed=0, diversity=50.0)
    assert plain.images.shape[0] == 3 and plain.target == ["stage3:4"] * 3

    def similarity(images):
        from cnnlens.synthesize.visualize import _gram_similarity

        with look(model) as s, torch.no_grad(), capture(s.net, ["stage3"]) as cap:
            s.logits(images)
            return float(_gram_similarity(cap["stage3"], torch.zeros(len(images), dtype=torch.long)).mean())

    assert similarity(diverse.images) < similarity(plain.images)


def test_the_model_is_untouched_and_the_global_rng_too():
    model = random_model("resnet18")
    with MidTraining(model):
        before = snapshot(model)
        rng = torch.get_rng_state()
        for preset in ("raw", "keras", "yosinski", "lucid"):
            cl.visualize(model, ["layer3:1", 2], preset=preset, steps=3, size=64, seed=0)
        assert_unchanged(model, before)
        assert torch.equal(rng, torch.get_rng_state())


def test_progress_cancel_and_partial_images(shapes):
    model, _ = shapes
    seen, partials = [], []
    result = cl.visualize(model, 1, preset="lucid", steps=12, seed=0, progress=lambda d, t: seen.append((d, t)),
                          partial=partials.append)
    assert seen[-1] == (12, 12) and [p.params["steps"] for p in partials] == [4, 8]
    assert partials[0].images.shape == result.images.shape
    token = cl.CancelToken()
    with pytest.raises(cl.Cancelled):
        cl.visualize(model, 1, steps=50, seed=0, progress=lambda d, t: token.cancel(), cancel=token)


def test_any_input_the_model_takes():
    gray = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3)).eval()
    one = cl.visualize(gray, 2, preset="lucid", steps=4, size=(40, 56), seed=0)
    assert one.images.shape == (1, 1, 40, 56)
    torch.manual_seed(0)
    backbone = nn.Sequential(*list(torchvision.models.resnet18(weights=None).children())[:-2]).eval()
    feature = cl.visualize(backbone, "6:3", preset="raw", steps=4, size=64, seed=0)
    assert feature.confidence is None and feature.predictions == [[]]
    resnet = random_model("resnet18")
    cl.configure(resnet, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    try:
        assert cl.visualize(resnet, "layer2:0", steps=2, size=48, seed=0).images.shape == (1, 3, 48, 48)
    finally:
        cl.configure(resnet, reset=True)


def test_bad_arguments_name_themselves(shapes):
    model, _ = shapes
    with pytest.raises(ValueError, match="Unknown preset 'lucent'.*lucid"):
        cl.visualize(model, 1, preset="lucent")
    with pytest.raises(ValueError, match="strength"):
        cl.visualize(model, 1, strength=2)
    with pytest.raises(ValueError, match="size"):
        cl.visualize(model, 1, size=3)
    with pytest.raises(ValueError, match="target: visualize needs"):
        cl.visualize(model, None)
    with pytest.raises(ValueError, match="Unknown target layer 'stage9'"):
        cl.visualize(model, "stage9:1")
    with pytest.raises(TypeError, match="transforms"):
        cl.visualize(model, 1, transforms=3)


def test_strength_moves_from_raw_to_heavily_regularized():
    from cnnlens.synthesize import PRESETS

    lucid = PRESETS["lucid"]
    assert lucid.at(None) == lucid and lucid.at(0.5).transforms == lucid.transforms
    assert lucid.at(0).transforms == 0 and lucid.at(1).transforms == 2 * lucid.transforms
    raw = PRESETS["raw"]
    assert not raw.at(0).rules.changes_pixels and raw.at(1).rules.blur_sigma > raw.at(0.5).rules.blur_sigma > 0


def test_a_unit_silent_on_the_start_wakes_up():
    """Lucid's redirected ReLU in the first steps: a unit whose pre-activation is negative on the gray start
    has no plain gradient, yet the optimization finds images that switch it on."""
    conv = nn.Conv2d(3, 2, 3, padding=1)
    with torch.no_grad():
        conv.weight.fill_(1 / 27)
        conv.bias.copy_(torch.tensor([-0.8, 0.0]))  # unit 0 needs pixels brighter than 0.8 on average
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2)).eval()
    result = cl.visualize(model, "1:0", preset="raw", size=16, steps=40, seed=0)
    assert float(result.history[0, 0]) == 0.0
    assert float(result.history[-1, 0]) > 0.05


def test_diversity_is_measured_at_each_targets_own_layer(shapes, monkeypatch):
    """It was measured at the alphabetically first layer of all targets together (stage2 for a stage3 target
    beside a stage2 one), and raised an IndexError on a layer without a grid."""
    model, _ = shapes
    import sys

    module = sys.modules["cnnlens.synthesize.visualize"]
    seen = []
    measure = module._gram_similarity
    monkeypatch.setattr(module, "_gram_similarity", lambda acts, groups: (seen.append(tuple(acts.shape[1:])),
                                                                          measure(acts, groups))[1])
    cl.visualize(model, ["stage3:5", "stage2:1"], starts=2, diversity=5.0, steps=1, seed=0)
    assert sorted(set(seen)) == sorted({(32, 16, 16), (64, 8, 8)})
    seen.clear()
    cl.visualize(model, cl.channel("stage4", 5) + 0.01 * cl.channel("stage1", 1), starts=2, diversity=5.0, steps=1,
                 seed=0)
    assert set(seen) == {(128, 8, 8)}  # the deepest layer the objective reads
    result = cl.visualize(model, "fc:2", starts=2, diversity=5.0, steps=2, seed=0)
    assert torch.isfinite(result.images).all()


def test_a_cancelled_job_runs_no_step_and_objectives_check_their_numbers(shapes):
    model, _ = shapes
    token, seen = cl.CancelToken(), []
    token.cancel()
    with pytest.raises(cl.Cancelled):
        cl.visualize(model, "stage3:5", steps=10, cancel=token, progress=lambda d, t: seen.append(d))
    assert seen == []
    for make, error, match in ((lambda: cl.channel("stage3", 1.7), TypeError, "unit must be an int, got 1.7"),
                               (lambda: cl.channel("stage3", True), TypeError, "unit must be an int"),
                               (lambda: cl.neuron("stage3", 1, 1.5, 2), TypeError, "y must be an int"),
                               (lambda: cl.direction("stage3", "abc"), TypeError, "vector must be a tensor"),
                               (lambda: cl.direction("stage3", [float("nan")] * 64), ValueError, "finite"),
                               (lambda: cl.prob(3) * float("nan"), TypeError, "finite numbers only"),
                               (lambda: cl.visualize(model, cl.neuron("fc", 1, 5, 5), steps=1), ValueError,
                                "no spatial grid"),
                               (lambda: cl.visualize(model, [0, 1], steps=1).figure(columns=0), ValueError,
                                "columns must be an int ≥ 1")):
        with pytest.raises(error, match=match):
            make()
