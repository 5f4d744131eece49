"""One target algebra, the same in every method (issue 6, part 4)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import cnnlens as cl
from cnnlens.core.objectives import Context

from .conftest import random_model

X = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
GRADIENT_METHODS = {
    "saliency": lambda m, x, t: cl.saliency(m, x, t),
    "smoothgrad": lambda m, x, t: cl.smoothgrad(m, x, t, samples=3, seed=0),
    "integrated_gradients": lambda m, x, t: cl.integrated_gradients(m, x, t, steps=4),
    "input_x_gradient": lambda m, x, t: cl.input_x_gradient(m, x, t),
    "guided_backprop": lambda m, x, t: cl.guided_backprop(m, x, t),
    "deconvnet": lambda m, x, t: cl.deconvnet(m, x, t),
    "gradcam": lambda m, x, t: cl.gradcam(m, x, t, layer="6"),
}


def test_predicted_means_the_clean_prediction_however_it_is_written():
    model = random_model("resnet18")
    a = cl.integrated_gradients(model, X, None, steps=8)
    b = cl.integrated_gradients(model, X, cl.predicted() * 1.0, steps=8)
    c = cl.integrated_gradients(model, X, 0.5 * cl.predicted() + 0.5 * cl.predicted(), steps=8)
    torch.testing.assert_close(a.map, b.map)
    torch.testing.assert_close(a.map, c.map)
    s1 = cl.smoothgrad(model, X, None, samples=4, seed=0, noise=0.5)
    s2 = cl.smoothgrad(model, X, cl.predicted() - 0, samples=4, seed=0, noise=0.5)
    torch.testing.assert_close(s1.map, s2.map)


def test_occlusion_of_predicted_maps_the_clean_class_not_each_occluded_images_own():
    model = random_model("resnet18")
    top = [p[0].index for p in cl.saliency(model, X).predictions]
    ours = cl.occlusion(model, X, cl.predicted(), mask_size=32, stride=16)
    explicit = cl.occlusion(model, X, cl.logit(top), mask_size=32, stride=16)
    torch.testing.assert_close(ours.map, explicit.map)
    assert ours.target.startswith("logit(")


def test_sums_of_per_image_targets_work_in_occlusion_as_in_smoothgrad():
    model = random_model("resnet18")
    target = cl.logit([0, 1]) - cl.logit(2)
    both = cl.occlusion(model, X, target, mask_size=32, stride=16)
    for i in range(2):
        alone = cl.occlusion(model, X[i], cl.logit([0, 1][i]) - cl.logit(2), mask_size=32, stride=16)
        torch.testing.assert_close(both.map[i], alone.map, rtol=1e-5, atol=1e-6)
    cl.smoothgrad(model, X, target, samples=2, seed=0)
    cl.integrated_gradients(model, X, target, steps=3)


def test_constants_on_either_side_print_in_the_order_written():
    assert (2 + cl.prob(3)).description == "2 + prob(3)"
    assert (cl.prob(3) - 0.5).description == "prob(3) - 0.5"
    assert (1 - cl.logit(2)).description == "1 - logit(2)"
    assert (-cl.logit(1) + 3).description == "-logit(1) + 3"
    logits = torch.randn(4, 5)
    ctx = Context(None, {}, logits)
    torch.testing.assert_close((2 + cl.prob(3))(ctx), 2 + torch.softmax(logits, 1)[:, 3])
    torch.testing.assert_close((1 - cl.logit(2))(ctx), 1 - logits[:, 2])
    torch.testing.assert_close((cl.prob(3) - 0.5)(ctx), torch.softmax(logits, 1)[:, 3] - 0.5)


def test_objectives_see_the_input():
    from cnnlens.core.objectives import Custom

    model = random_model("resnet18")
    brightness = Custom(lambda ctx: ctx.input.mean((1, 2, 3)), description="brightness", needs_logits=False,
                        context=True)
    grad = cl.saliency(model, X, brightness).raw
    torch.testing.assert_close(grad, torch.full_like(grad, 1 / X[0].numel()))


def _backbone() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*list(torchvision.models.resnet18(weights=None).children())[:-2]).eval()


@pytest.mark.parametrize("method", list(GRADIENT_METHODS))
@pytest.mark.parametrize("target", ["7:3", cl.channel("7", 3), cl.neuron("6", 2), cl.direction("7", torch.ones(512))],
                         ids=["string", "channel", "neuron", "direction"])
def test_a_backbone_without_a_class_head_takes_feature_targets_in_every_gradient_method(method, target):
    model = _backbone()
    if method == "gradcam" and isinstance(target, cl.Objective) and "6" in target.layers:
        pytest.skip("a Grad-CAM target below its layer is refused (tested elsewhere)")
    result = GRADIENT_METHODS[method](model, X, target)
    assert result.map.shape == (2, 64, 64) and torch.isfinite(result.map).all()
    assert float(result.map.abs().sum()) > 0
    assert result.predictions == [[], []]


def test_the_forward_stops_after_the_deepest_layer_the_target_needs():
    class Exploding(nn.Module):
        def forward(self, x):
            raise RuntimeError("the head ran")

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), Exploding()).eval()
    for method in ("saliency", "smoothgrad", "integrated_gradients", "guided_backprop", "deconvnet"):
        GRADIENT_METHODS[method](model, X, "2:1")
    with pytest.raises(RuntimeError, match="the head ran"):  # not rewritten as a size problem either
        cl.saliency(model, X, 0)


def test_layer_accepts_a_module_object():
    model = random_model("resnet18")
    by_name = cl.gradcam(model, X, 1, layer="layer4")
    by_module = cl.gradcam(model, X, 1, layer=model.layer4)
    last_block = cl.gradcam(model, X, 1, layer=model.layer3[-1])
    torch.testing.assert_close(by_name.map, by_module.map)
    assert by_module.layer == "layer4" and last_block.layer == "layer3.1"
    assert cl.occlusion(model, X[0], 1, layer=model.layer2, mask_size=32, stride=32).layer == "layer2"
    with pytest.raises(ValueError, match="not a module of this model"):
        cl.gradcam(model, X, 1, layer=nn.Conv2d(3, 3, 1))


def test_new_input_sizes_cost_no_probe_forward_and_the_layer_table_cache_is_bounded():
    from cnnlens.core.session import _TABLES, MAX_TABLES
    from cnnlens.core.shadow import shadow

    class Counting(nn.Module):
        calls = 0

        def forward(self, x):
            type(self).calls += 1
            return x

    model = nn.Sequential(nn.Conv2d(3, 8, 3), Counting(), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 4)).eval()
    for side in range(20, 32):
        before = Counting.calls
        cl.saliency(model, torch.rand(3, side, side), "3:1")
        cl.saliency(model, torch.rand(3, side, side), 2)
        assert Counting.calls - before == 2, "a probe forward ran for a new size"
    for side in range(20, 40):
        cl.gradcam(model, torch.rand(3, side, side), 1)  # needs the table (the last spatial layer): probed
    assert len(_TABLES[shadow(model)]) <= MAX_TABLES
