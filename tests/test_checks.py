"""Explanation checks: the randomization test (Adebayo et al. 2018), deletion/insertion (Petsiuk et al. 2018),
pointing game and mask overlap."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

import cnnlens as cl
from cnnlens.core.progress import Cancelled, CancelToken
from cnnlens.dataset.checks import _randomize
from cnnlens.dataset.metrics import as_maps, mask_of
from tests.conftest import assert_unchanged, forwards_in_parts, random_model, snapshot


@pytest.fixture(scope="module")
def shapes():
    model, data = cl.zoo.shapes()
    images = torch.stack([data[i][0] for i in range(8)])
    masks = torch.stack([data[i][2] for i in range(8)])
    return model, data, images, masks


# --- the randomization test ---------------------------------------------------------------------------------


def test_reproduces_adebayo_on_the_default_model(shapes):
    """Gradient and Grad-CAM maps change when the weights are randomized; guided backprop barely does."""
    model, _, images, _ = shapes
    verdicts = {method: cl.sanity_check(model, images, method) for method in ("saliency", "gradcam",
                                                                               "guided_backprop")}
    assert verdicts["saliency"].passes and verdicts["gradcam"].passes
    assert not verdicts["guided_backprop"].passes
    assert verdicts["guided_backprop"].score > verdicts["saliency"].score + 0.1
    # with only the top layer random, guided backprop's map is nearly the trained one (the paper's Fig. 2)
    assert verdicts["guided_backprop"].spearman_abs[0] > 0.85 > verdicts["saliency"].spearman_abs[0]


def test_methods_that_ignore_the_model_fail(shapes):
    """Planted faults: an edge detector on the image, a fixed noise map and a constant map do not depend on the
    weights, so randomizing them changes nothing (|Spearman| 1) and the check fails; your own functions work."""
    model, _, images, _ = shapes

    def edges(model, x, target):
        gray = x.mean(1)
        return (gray.diff(dim=-1, prepend=gray[..., :1]).abs() + gray.diff(dim=-2, prepend=gray[..., :1, :]).abs())

    def noise(model, x, target):
        return torch.rand(len(x), 64, 64, generator=torch.Generator().manual_seed(0))

    def constant(model, x, target):
        return torch.zeros(len(x), 64, 64)

    for method in (edges, noise, constant):
        check = cl.sanity_check(model, images[:2], method, layers=["fc", "stage1.conv1"])
        assert not check.passes and check.score == pytest.approx(1.0), method.__name__
        assert check.method == method.__name__


def test_fully_randomized_saliency_correlates_weakly(shapes):
    model, _, images, _ = shapes
    check = cl.sanity_check(model, images, "saliency")
    assert check.layers[0] == "fc" and check.layers[-1] == "stage1.conv1"  # top first
    assert len(check.spearman) == len(check.spearman_abs) == len(check.ssim) == len(check.layers) == 13
    assert abs(float(check.spearman_abs[-1])) < 0.35 and float(check.ssim[-1]) < 0.3
    assert check.maps.shape == (13, 8, 64, 64) and check.original.shape == (8, 64, 64)


def test_randomized_maps_match_a_brute_force_randomization(shapes):
    """The cascade's last map = the method on a separately built model, randomized top-down with the same
    generator; the statistics = scipy's Spearman on those maps."""
    model, _, images, _ = shapes
    check = cl.sanity_check(model, images[:3], "saliency", seed=5)
    twin = cl.zoo.shapes_model()
    twin.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(5)
    modules = dict(twin.named_modules())
    for name in check.layers:
        _randomize(modules[name], gen)
    target = cl.saliency(model, images[:3]).predictions
    classes = [p[0].index for p in target]
    expected = cl.saliency(twin, images[:3], classes).map
    torch.testing.assert_close(check.maps[-1], expected)
    original = cl.saliency(model, images[:3]).map
    for i in range(3):
        rho = spearmanr(original[i].flatten().numpy(), expected[i].flatten().numpy()).statistic
        assert float(check.per_image["spearman"][-1, i]) == pytest.approx(rho, abs=1e-5)


def test_independent_mode_randomizes_one_layer_at_a_time(shapes):
    model, _, images, _ = shapes
    layers = ["fc", "stage4.conv1", "stage2.conv1"]
    cascading = cl.sanity_check(model, images[:2], "gradcam", mode="cascading", layers=layers)
    independent = cl.sanity_check(model, images[:2], "gradcam", mode="independent", layers=list(reversed(layers)))
    assert independent.layers == cascading.layers == layers  # always top first
    torch.testing.assert_close(independent.maps[0], cascading.maps[0])  # the first step is the same model
    # stage2.conv1 alone random vs. everything above it random too: different models, different maps
    assert not torch.allclose(independent.maps[2], cascading.maps[2])


def test_deterministic_for_a_seed(shapes):
    model, _, images, _ = shapes
    a = cl.sanity_check(model, images[:2], "saliency", layers=["fc", "stage4.conv1"], seed=1)
    b = cl.sanity_check(model, images[:2], "saliency", layers=["fc", "stage4.conv1"], seed=1)
    c = cl.sanity_check(model, images[:2], "saliency", layers=["fc", "stage4.conv1"], seed=2)
    assert torch.equal(a.maps, b.maps) and torch.equal(a.spearman, b.spearman)
    assert not torch.equal(a.maps, c.maps)


def test_any_method_and_a_torchvision_model():
    model = random_model("resnet18")
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    check = cl.sanity_check(model, x, "gradcam", layers=["fc", "layer4.1.conv2"], layer="layer4")
    assert check.layers == ["fc", "layer4.1.conv2"] and check.spearman.shape == (2,)
    assert torch.isfinite(check.ssim).all()


def test_single_image_shapes(shapes):
    model, _, images, _ = shapes
    check = cl.sanity_check(model, images[0], "input_x_gradient", layers=["fc"])
    assert check.original.shape == (64, 64) and check.maps.shape == (1, 64, 64)
    assert check.per_image["ssim"].shape == (1, 1)
    lean = cl.sanity_check(model, images[0], "input_x_gradient", layers=["fc"], keep_maps=False)
    assert lean.maps is None and torch.equal(lean.spearman, check.spearman)


# --- deletion and insertion ---------------------------------------------------------------------------------


def test_oracle_map_beats_a_random_map(shapes):
    """A map that is the object (its mask grown by 4 px, so the outline counts: the shapes are flat-coloured, and
    deleting exactly the mask leaves a silhouette the model still recognizes) deletes the evidence faster and
    inserts it faster than a random map as smooth as a saliency map."""
    model, data, _, _ = shapes
    images = torch.stack([data[i][0] for i in range(16)])
    masks = torch.stack([data[i][2] for i in range(16)]).float()
    gen = torch.Generator().manual_seed(0)
    grown = torch.nn.functional.max_pool2d(masks[:, None], 9, stride=1, padding=4)[:, 0]
    oracle = grown + 0.01 * torch.rand(16, 64, 64, generator=gen)  # the object first, in random order
    smooth = torch.nn.functional.interpolate(torch.rand(16, 1, 8, 8, generator=gen), size=64, mode="bilinear")[:, 0]
    d_oracle, d_random = (cl.deletion(model, images, m, steps=16) for m in (oracle, smooth))
    i_oracle, i_random = (cl.insertion(model, images, m, steps=16) for m in (oracle, smooth))
    assert d_oracle.auc.mean() < d_random.auc.mean() - 0.1
    assert i_oracle.auc.mean() > i_random.auc.mean() + 0.2
    assert d_oracle.scores.shape == (16, 17) and d_oracle.fractions[0] == 0 and d_oracle.fractions[-1] == 1
    assert d_oracle.target == "prob(predicted class)"


def test_deletion_curve_matches_brute_force(shapes):
    model, _, images, _ = shapes
    x, m = images[1], torch.rand(64, 64, generator=torch.Generator().manual_seed(3))
    curve = cl.deletion(model, x, m, steps=8, baseline=0.25)
    insert = cl.insertion(model, x, m, steps=8, blur=0.0)  # no blur: the start is the image itself
    cls = cl.saliency(model, x).predictions[0].index
    order = m.flatten().argsort(descending=True)
    for k in (0, 3, 8):
        n = round(k * 4096 / 8)
        y = x.clone().view(3, -1)
        y[:, order[:n]] = 0.25
        with torch.no_grad():
            p = torch.softmax(model(y.view(1, 3, 64, 64)), 1)[0, cls]
        assert float(curve.scores[k]) == pytest.approx(float(p), abs=1e-5)
    assert torch.allclose(insert.scores, insert.scores[0].expand(9), atol=1e-5)
    assert float(curve.auc) == pytest.approx(float(np.trapezoid(curve.scores.numpy(), curve.fractions.numpy())))


def test_curves_run_in_heap_sized_batches_by_default(shapes, monkeypatch):
    """Without a ``batch_size`` the curves' forwards take the session's heap-sized batch (5 here) and give the
    scores of one batch of 64."""
    model, _, images, _ = shapes
    x, m = images[2], torch.rand(64, 64, generator=torch.Generator().manual_seed(5))
    whole = cl.deletion(model, x, m, steps=12, batch_size=64)
    sizes = forwards_in_parts(monkeypatch, 5)
    parts = cl.deletion(model, x, m, steps=12)
    assert max(sizes) == 5 and sizes.count(5) == 2 and sizes[-1] == 3  # the 13 images, after the clean forward
    torch.testing.assert_close(parts.scores, whole.scores, rtol=0, atol=1e-6)


def test_baselines_and_explanations_as_maps(shapes):
    model, _, images, _ = shapes
    explanation = cl.gradcam(model, images[2])
    for baseline in ("zeros", "mean", "blur", 0.5, torch.zeros(3, 1, 1)):
        curve = cl.deletion(model, images[2], explanation, steps=4, baseline=baseline)
        assert curve.scores.shape == (5,) and 0 <= float(curve.auc) <= 1


def test_occlusion_is_scored_by_its_drop_map(shapes):
    """Occlusion's map is the probability under occlusion (low where hiding hurts): checks read its drop_map."""
    model, _, images, masks = shapes
    result = cl.occlusion(model, images[:4], mask_size=16, stride=8)
    assert torch.equal(as_maps(result, 4, (64, 64)), result.drop_map.float())
    by_result, by_drop = (cl.deletion(model, images[:4], m, steps=8) for m in (result, result.drop_map))
    assert torch.equal(by_result.auc, by_drop.auc)
    assert cl.pointing_game(result, masks[:4]).float().mean() >= 0.5


# --- pointing game and mask overlap -------------------------------------------------------------------------


def test_pointing_game_on_synthetic_maps():
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[10:20, 10:20] = True
    inside, outside, near, flat = (torch.zeros(32, 32) for _ in range(4))
    inside[15, 15] = 1
    outside[2, 2] = 1
    near[15, 20] = 1  # one pixel right of the mask (columns 10-19)
    assert cl.pointing_game(inside, mask) is True
    assert cl.pointing_game(outside, mask) is False
    assert cl.pointing_game(near, mask, tolerance=1) and not cl.pointing_game(near, mask, tolerance=0)
    assert cl.pointing_game(flat, mask) is False  # a flat map points nowhere
    plateau = torch.zeros(32, 32)
    plateau[12:22, 12:22] = 1  # a superpixel: 81 of its 100 pixels on the object (grown by 1 px)
    assert cl.pointing_game(plateau, mask) is True
    plateau[12:22, 12:22], plateau[14:24, 14:24] = 0, 1  # 49 of 100
    assert cl.pointing_game(plateau, mask) is False
    hits = cl.pointing_game(torch.stack([inside, outside]), mask)
    assert hits.tolist() == [True, False]


def test_mask_overlap_on_synthetic_maps():
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[:8] = True  # a quarter of the image
    assert cl.mask_overlap(mask.float(), mask) == pytest.approx(1.0)
    assert cl.mask_overlap(torch.ones(32, 32), mask) == pytest.approx(0.25)
    assert cl.mask_overlap(-torch.ones(32, 32), mask) == 0.0
    signed = torch.where(mask, 1.0, -5.0)  # negative evidence is not mass
    assert cl.mask_overlap(signed, mask) == pytest.approx(1.0)
    small = torch.zeros(16, 16)
    small[:4] = 1  # maps at another resolution are resized to the mask's
    assert cl.mask_overlap(small, mask) == pytest.approx(1.0)


def test_mask_of_items(shapes):
    _, data, _, _ = shapes
    assert torch.equal(mask_of(data[0]), data[0][2])
    assert mask_of((torch.zeros(3, 8, 8), 1)) is None
    assert mask_of({"image": 0, "mask": np.ones((4, 4), bool)}).shape == (4, 4)


def test_check_explanation_gathers_every_number(shapes):
    model, data, _, _ = shapes
    image, _, mask = data[0]
    report = cl.check_explanation(model, image, "gradcam", mask=mask, steps=8)
    summary = report.summary()
    assert set(summary) == {"deletion", "insertion", "pointing", "overlap", "sanity", "spearman"}
    assert isinstance(summary["pointing"], bool) and 0 <= summary["overlap"] <= 1
    assert report.sanity.passes and report.deletion.scores.shape == (9,)
    assert cl.check_explanation(model, image, "saliency", sanity=False, steps=4).sanity is None


# --- errors, progress, cancellation, invariants -------------------------------------------------------------


def test_bad_arguments(shapes):
    model, _, images, masks = shapes
    with pytest.raises(ValueError, match="method='nope'.*saliency"):
        cl.sanity_check(model, images[0], "nope")
    with pytest.raises(ValueError, match="mode='down'.*cascading, independent"):
        cl.sanity_check(model, images[0], mode="down")
    with pytest.raises(ValueError, match="'conv9'.*stage1.conv1"):
        cl.sanity_check(model, images[0], layers=["conv9"])
    with pytest.raises(ValueError, match="an empty list"):
        cl.sanity_check(model, images[0], layers=[])
    with pytest.raises(TypeError, match="seed"):
        cl.sanity_check(model, images[0], seed=1.5)
    with pytest.raises(ValueError, match="steps"):
        cl.deletion(model, images[0], masks[0].float(), steps=0)
    with pytest.raises(ValueError, match="baseline='grey'.*zeros, mean, blur"):
        cl.deletion(model, images[0], masks[0].float(), baseline="grey")
    with pytest.raises(ValueError, match="saliency_map.*B = 2"):
        cl.deletion(model, images[:2], torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="blur"):
        cl.insertion(model, images[0], masks[0].float(), blur=-1)
    with pytest.raises(ValueError, match="mask must be"):
        cl.pointing_game(torch.rand(2, 8, 8), torch.ones(3, 8, 8))
    with pytest.raises(TypeError, match="saliency_map"):
        cl.mask_overlap("map", masks[0])
    with pytest.raises(ValueError, match="one image"):
        cl.check_explanation(model, images[:2], "saliency")


def test_progress_and_cancel(shapes):
    model, _, images, masks = shapes
    seen = []
    cl.sanity_check(model, images[:1], layers=["fc", "stage4.conv1"], progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    token = CancelToken()
    token.cancel()
    before = snapshot(model)
    with pytest.raises(Cancelled):
        cl.sanity_check(model, images[:1], cancel=token)
    with pytest.raises(Cancelled):
        cl.insertion(model, images[:1], masks[:1].float(), cancel=token)
    assert_unchanged(model, before)


def test_the_users_model_is_unchanged(shapes):
    """Train mode, a user's forward hook, BatchNorm statistics, no .grad: all bitwise the same afterwards."""
    _, data, images, masks = shapes
    model = cl.zoo.shapes_model()
    model.train()
    calls = []
    model.stage2.register_forward_hook(lambda *_: calls.append(1))
    before = snapshot(model)
    cl.sanity_check(model, images[:2], "guided_backprop", seed=3)
    cl.sanity_check(model, images[:2], "smoothgrad", mode="independent", layers=["fc", "stage1.bn1"], samples=2)
    cl.deletion(model, images[:2], masks[:2].float(), steps=4)
    cl.insertion(model, images[:2], masks[:2].float(), steps=4)
    cl.check_explanation(model, data[0][0], "gradcam", mask=data[0][2], steps=4)
    assert_unchanged(model, before)
    assert calls == [] and all(p.grad is None for p in model.parameters())


# --- the Attribution view's "check" action ------------------------------------------------------------------


def test_attribution_view_check_action(shapes):
    from cnnlens.widgets import AttributionView

    model, data, _, _ = shapes
    view = AttributionView(model, data)
    try:
        assert view.wait(60) and view.check.box.layout.display == "none"
        view.check.button.click()
        assert view.check.runner.wait(120)
        names = [name for name, _ in view.check.numbers.bars]
        assert names == ["randomization: passes", "deletion ↓", "insertion ↑", names[3], "mask overlap ↑"]
        assert view.check.plot.shape[1] > 600 and len(view.check.plot.image) == 3 * view.check.plot.shape[0] * 960
        # the same numbers as the function a script calls (the item's mask found in the dataset)
        report = cl.check_explanation(model, data[0][0], "gradcam", mask=data[0][2], steps=32, layer="stage4")
        assert view.check.numbers.bars[1][1] == pytest.approx(float(report.deletion.auc))
        assert view.check.numbers.bars[4][1] == pytest.approx(report.overlap)
        view.method.value = "saliency"  # the map changes: the check no longer describes it
        assert view.check.box.layout.display == "none"
    finally:
        view.close()
    assert view.check.runner.closed
