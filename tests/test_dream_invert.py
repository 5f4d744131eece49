"""Deep Dream and code inversion on the embedded default model: what they do, and that looking stays harmless."""

from __future__ import annotations

import pytest
import torch

import cnnlens as cl
from cnnlens.core.objectives import Custom
from cnnlens.synthesize.invert import STEPS

from .conftest import assert_unchanged, snapshot
from .test_invariants import MidTraining


@pytest.fixture(scope="module")
def shapes():
    return cl.zoo.shapes(n=8)


def l2_of(model, x: torch.Tensor, stage: str = "stage3") -> torch.Tensor:
    """Mean squared activation of ``stage`` per image, computed by hand from the model's stages."""
    with torch.no_grad():
        h = model.normalize(x if x.dim() == 4 else x[None])
        for name in ("stage1", "stage2", "stage3", "stage4"):
            h = getattr(model, name)(h)
            if name == stage:
                return h.pow(2).flatten(1).mean(1)
    raise ValueError(stage)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float(a @ b / (a.norm() * b.norm()))


# --- Deep Dream ---------------------------------------------------------------------------------


def test_deepdream_raises_the_layer_norm_octave_by_octave(shapes):
    model, data = shapes
    image = data[0][0]
    partials = []
    result = cl.deepdream(model, image, "stage3", seed=0, partial=partials.append)
    assert result.images.shape == (1, 3, 64, 64) and result.target == ["l2(stage3)"]
    assert 0 <= result.images.min() and result.images.max() <= 1
    assert (result.images[0] - image).abs().mean() > 0.01  # the image changed
    assert l2_of(model, result.images) > 2 * l2_of(model, image)  # and the layer responds far more
    sizes = result.params["octave_sizes"]
    assert sizes == [(23, 23), (33, 33), (46, 46), (64, 64)]
    per_octave = result.history[:, 0].view(len(sizes), 10)
    assert per_octave[-1, -1] > per_octave[0, -1]  # the last octave ends higher than the first
    assert (per_octave[1:, -1] > per_octave[1:, 0]).all()  # each octave past the smallest ascends
    ends = [p for p in partials if p.params["step"] == 10]  # one after each octave but the last
    assert [p.params["octave"] for p in ends] == [1, 2, 3]
    assert all(p.images.shape == (1, 3, 64, 64) for p in partials)


def test_deepdream_takes_every_target_of_the_algebra(shapes):
    model, data = shapes
    image = data[0][0]
    images = torch.stack([data[i][0] for i in range(4)])
    unit = cl.deepdream(model, images, "stage4:3", seed=0)
    assert unit.target == ["stage4:3"] * 4 and unit.images.shape == (4, 3, 64, 64)
    with torch.no_grad():
        channel = lambda x: model.stage4(model.stage3(model.stage2(model.stage1(model.normalize(x)))))[:, 3]  # noqa: E731
        gain = channel(unit.images).mean((1, 2)) / channel(images).mean((1, 2))
    assert gain.median() > 1.5  # measured 1.2, 2.2, 1.9, 4.1
    module = cl.deepdream(model, image, model.stage2, seed=0, octaves=1, steps=2)
    assert module.target == ["l2(stage2)"]
    assert cl.deepdream(model, image, None, seed=0, octaves=1, steps=1).target == ["l2(stage4)"]  # last spatial
    with torch.no_grad():
        before = torch.softmax(model(image[None]), 1)[0, 3]
    star = cl.deepdream(model, image, 3, seed=0)  # a class: the model's confidence is reported
    assert star.target == ["logit(3: star)"] and star.predictions[0][0].name == "star"
    assert float(star.confidence[0]) > max(0.9, float(before))
    batch = cl.deepdream(model, torch.stack([data[1][0], data[2][0]]), "stage3", seed=0, octaves=2, steps=3)
    assert batch.images.shape == (2, 3, 64, 64) and batch.history.shape == (6, 2)


def test_deepdream_is_deterministic_for_a_seed(shapes):
    model, data = shapes
    image = data[3][0]
    a = cl.deepdream(model, image, "stage3", seed=7, octaves=2, steps=4)
    b = cl.deepdream(model, image, "stage3", seed=7, octaves=2, steps=4)
    c = cl.deepdream(model, image, "stage3", seed=8, octaves=2, steps=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.history, b.history)
    assert not torch.equal(a.images, c.images)


def test_deepdream_tiles_large_images(shapes):
    """A 600×600 image with tile=256: every forward sees at most 256 pixels a side; the dream keeps the size."""
    model, _ = shapes
    image = torch.rand(3, 600, 600, generator=torch.Generator().manual_seed(0))
    seen = []

    def recorded(ctx):
        seen.append(tuple(ctx.input.shape[-2:]))
        return ctx.activations["stage3"].pow(2).flatten(1).mean(1)

    target = Custom(recorded, ["stage3"], "l2 (recorded)", needs_logits=False, context=True)
    result = cl.deepdream(model, image, target, seed=0, tile=256, octaves=2, steps=2)
    assert result.images.shape == (1, 3, 600, 600) and result.params["octave_sizes"] == [(429, 429), (600, 600)]
    assert max(max(s) for s in seen) <= 256 and len(seen) == 2 * 2 * 2 + 2 * 3 * 3  # 2×2 tiles, then 3×3
    assert (result.images - image).abs().mean() > 1e-3 and 0 <= result.images.min() <= result.images.max() <= 1
    whole = cl.deepdream(model, image[:, :200, :200], "stage3", seed=0, tile=256, octaves=1, steps=1)
    assert whole.images.shape == (1, 3, 200, 200)


# --- inversion ----------------------------------------------------------------------------------


def test_inversion_error_falls_and_first_stage_reconstructs_the_image(shapes):
    model, data = shapes
    image = data[0][0]
    partials = []
    result = cl.invert(model, image, "stage1", steps=100, seed=0, partial=partials.append)
    assert result.images.shape == (1, 3, 64, 64) and result.history.shape == (100, 1)
    assert 0 <= result.images.min() and result.images.max() <= 1
    error = result.history[:, 0]
    assert error[-1] < 0.2 * error[0] and error[-10:].mean() < error[:10].mean()
    assert pearson(result.images[0], image) > 0.9  # measured 0.98
    assert [p.params["steps"] for p in partials] == [20, 40, 60, 80]
    assert result.target == ["invert(stage1)"] and STEPS == 400


def test_inversion_of_a_list_of_layers_gives_one_image_per_layer(shapes):
    model, data = shapes
    image = data[1][0]
    result = cl.invert(model, image, ["stage1", model.stage2, "fc"], steps=10, seed=0)
    assert result.images.shape == (3, 3, 64, 64) and result.history.shape == (10, 3)
    assert result.params["layers"] == ["stage1", "stage2", "fc"]
    assert result.target == ["invert(stage1)", "invert(stage2)", "invert(fc)"]
    tv = result.params["lambda_tv"]
    assert tv[0] < tv[1] < tv[2]  # deeper layers are regularized more by default
    # one batched optimization, each image scored only against its own layer and its own source image
    images = torch.stack([data[1][0], data[2][0]])
    both = cl.invert(model, images, ["stage1", "stage4"], steps=15, seed=0)
    assert both.target == ["invert(stage1)", "invert(stage4)"] * 2
    alone = cl.invert(model, images[0], "stage1", steps=15, seed=0)
    torch.testing.assert_close(both.images[0], alone.images[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(both.history[:, 0], alone.history[:, 0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("call, argument", [
    (lambda m, x: cl.deepdream(m, x, "stage3", octaves=0), "octaves"),
    (lambda m, x: cl.deepdream(m, x, "stage3", octave_scale="big"), "octave_scale"),
    (lambda m, x: cl.deepdream(m, x, "stage3", step_size=-1), "step_size"),
    (lambda m, x: cl.deepdream(m, x, "stage3", steps=1.5), "steps"),
    (lambda m, x: cl.deepdream(m, x, "stage3", jitter=-2), "jitter"),
    (lambda m, x: cl.deepdream(m, x, "stage3", tile=4), "tile"),
    (lambda m, x: cl.deepdream(m, x, "stage3", seed="x"), "seed"),
    (lambda m, x: cl.deepdream(m, x, "stage9"), "target"),
    (lambda m, x: cl.deepdream(m, x, "stage3:999"), "target"),
    (lambda m, x: cl.deepdream(m, x, "stage3", partial=3), "partial"),
    (lambda m, x: cl.deepdream(m, x, cl.neuron("stage3", 1, 7, 7)), "target: stage3:1@y=7, x=7 sits at one position"),
    (lambda m, x: cl.invert(m, x, "stage9"), "layer"),
    (lambda m, x: cl.invert(m, x, []), "layer"),
    (lambda m, x: cl.invert(m, x, 3), "layer"),
    (lambda m, x: cl.invert(m, x, torch.nn.Conv2d(3, 3, 3)), "layer"),
    (lambda m, x: cl.invert(m, x, "stage1", steps=0), "steps"),
    (lambda m, x: cl.invert(m, x, "stage1", alpha=0.5), "alpha"),
    (lambda m, x: cl.invert(m, x, "stage1", beta="2"), "beta"),
    (lambda m, x: cl.invert(m, x, "stage1", lambda_tv=-1), "lambda_tv"),
    (lambda m, x: cl.invert(m, x, "stage1", lambda_alpha="a"), "lambda_alpha"),
    (lambda m, x: cl.invert(m, x, "stage1", seed=1.5), "seed"),
])
def test_bad_arguments_name_the_argument(shapes, call, argument):
    model, data = shapes
    with pytest.raises((ValueError, TypeError), match=argument):
        call(model, data[0][0])


# --- harmless: the model never changes -----------------------------------------------------------


CALLS = {
    "deepdream": lambda m, x, **k: cl.deepdream(m, x, "stage3", seed=0, octaves=2, steps=3, **k),
    "invert": lambda m, x, **k: cl.invert(m, x, ["stage1", "stage3"], steps=5, seed=0, **k),
}


@pytest.mark.parametrize("method", list(CALLS))
def test_model_untouched_mid_training(shapes, method):
    model, data = shapes
    image = data[2][0]
    eval_result = CALLS[method](model, image)
    with MidTraining(model) as state:
        before = snapshot(model)
        rng = torch.get_rng_state()
        result = CALLS[method](model, image)
        assert_unchanged(model, before)
        assert state.fired == 0, "the user's hook fired: cnnlens ran the user's modules"
        assert torch.equal(rng, torch.get_rng_state()), "the global RNG was touched"
    torch.testing.assert_close(result.images, eval_result.images)  # eval semantics on a train-mode model


@pytest.mark.parametrize("method", list(CALLS))
def test_cancellation_raises_and_leaves_the_model_untouched(shapes, method):
    model, data = shapes
    token = cl.CancelToken()
    seen = []

    def progress(done, total):
        seen.append((done, total))
        token.cancel()

    with MidTraining(model):
        before = snapshot(model)
        with pytest.raises(cl.Cancelled):
            CALLS[method](model, data[0][0], progress=progress, cancel=token)
        assert_unchanged(model, before)
    assert seen == [(1, 6 if method == "deepdream" else 5)], "work went on after cancellation"
