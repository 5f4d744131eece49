"""Agreement with reference implementations: captum, pytorch-grad-cam and torchcam.

The references run on a deep copy with out-of-place ReLUs (captum's module
hooks need that, and pytorch-grad-cam calls ``model.eval()`` on what it is
given); cnnlens runs on the original model, in-place ReLUs and all.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from captum._utils.models.linear_model import SkLearnRidge
from captum.attr import (
    Deconvolution,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    Lime,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import cnnlens as cl

from .conftest import random_model

GRADIENT_ARCHS = ("default", "resnet18", "vgg11_bn", "alexnet", "mobilenet_v3_small", "densenet121")
RELU_MODULE_ARCHS = ("default", "resnet18", "vgg11_bn", "alexnet", "mobilenet_v3_small")  # no functional F.relu
CAM_LAYERS = {"default": "stage4", "resnet18": "layer4", "vgg11_bn": "features.27", "alexnet": "features.10",
              "mobilenet_v3_small": "features.12", "densenet121": "features.denseblock4"}
SIZE = {"default": 64, "alexnet": 128}


def _setup(arch: str, default_model):
    if arch == "default":
        model = default_model
    else:
        model = random_model(arch)
    size = SIZE.get(arch, 64)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    reference = copy.deepcopy(model).eval()
    for module in reference.modules():
        if isinstance(module, torch.nn.ReLU):
            module.inplace = False
    return model, reference, x


@pytest.fixture(scope="module")
def default_model(default):
    return default[0]


def close(ours: torch.Tensor, theirs: torch.Tensor, rtol: float = 1e-4) -> None:
    scale = float(theirs.detach().abs().max()) or 1.0
    torch.testing.assert_close(ours.float(), theirs.float().detach(), rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("arch", GRADIENT_ARCHS)
def test_gradient_methods_match_captum(arch, default_model):
    model, reference, x = _setup(arch, default_model)
    target = [1, 3]
    close(cl.saliency(model, x, target).raw.abs(), Saliency(reference).attribute(x, target=target, abs=True))
    close(cl.input_x_gradient(model, x, target).raw, InputXGradient(reference).attribute(x, target=target))
    ours = cl.integrated_gradients(model, x, target, steps=16, batch_size=8)
    theirs, delta = IntegratedGradients(reference).attribute(x, baselines=0.0, target=target, n_steps=16,
                                                            method="gausslegendre", internal_batch_size=8,
                                                            return_convergence_delta=True)
    close(ours.raw, theirs, rtol=1e-3)
    scale = float((ours.raw.flatten(1).sum(1) - delta).abs().max()) or 1.0  # |f(x) - f(baseline)|
    torch.testing.assert_close(ours.convergence_delta, delta.float(), rtol=0, atol=1e-3 * scale)
    # captum's trapezoid weights are 1/n with halved ends (they sum to (n-1)/n); cnnlens uses the exact
    # trapezoid rule on linspace(0, 1, n), weights 1/(n-1): the two differ by the factor (n-1)/n.
    trapezoid = cl.integrated_gradients(model, x, target, steps=10, rule="riemann_trapezoid")
    close(trapezoid.raw * 9 / 10, IntegratedGradients(reference).attribute(x, baselines=0.0, target=target, n_steps=10,
                                                                  method="riemann_trapezoid"), rtol=1e-3)


@pytest.mark.parametrize("arch", RELU_MODULE_ARCHS)
def test_relu_rule_methods_match_captum(arch, default_model):
    model, reference, x = _setup(arch, default_model)
    target = [2, 0]
    close(cl.guided_backprop(model, x, target).raw, GuidedBackprop(reference).attribute(x, target=target))
    close(cl.deconvnet(model, x, target).raw, Deconvolution(reference).attribute(x, target=target))


def test_smoothgrad_matches_captum_noise_tunnel_in_expectation(default_model):
    model, reference, x = _setup("default", default_model)
    ours = cl.smoothgrad(model, x[:1], 4, samples=400, noise=0.1, seed=0).raw
    torch.manual_seed(0)
    theirs = NoiseTunnel(Saliency(reference)).attribute(x[:1], nt_type="smoothgrad", nt_samples=400,
                                                        nt_samples_batch_size=100, stdevs=0.1, target=4, abs=True)
    corr = torch.corrcoef(torch.stack([ours.flatten(), theirs.flatten()]))[0, 1]
    assert corr > 0.95, f"SmoothGrad disagrees with captum's NoiseTunnel (correlation {corr:.3f})"
    noiseless = cl.smoothgrad(model, x[:1], 4, samples=3, noise=0.0).raw
    close(noiseless, cl.saliency(model, x[:1], 4).raw.abs())


@pytest.mark.parametrize("arch", ("default", "resnet18", "vgg11_bn"))
def test_occlusion_matches_captum(arch, default_model):
    model, reference, x = _setup(arch, default_model)
    ours = cl.occlusion(model, x[:1], 5, mask_size=16, stride=8, mask_value="gray")
    probs = lambda inp: torch.softmax(reference(inp), dim=1)  # noqa: E731
    theirs = Occlusion(probs).attribute(x[:1], sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8),
                                       baselines=0.5, target=5)[0, 0]
    p0 = float(probs(x[:1])[0, 5].detach())
    close(p0 - ours.mean_map[0], theirs, rtol=1e-4)  # captum's convention: mean over the covering windows


@pytest.mark.parametrize("arch", GRADIENT_ARCHS)
def test_gradcam_matches_pytorch_grad_cam(arch, default_model):
    model, reference, x = _setup(arch, default_model)
    layer = CAM_LAYERS[arch]
    ours = cl.gradcam(model, x, [1, 2], layer=layer)
    with GradCAM(model=reference, target_layers=[reference.get_submodule(layer)]) as extractor:
        theirs = extractor(input_tensor=x, targets=[ClassifierOutputTarget(1), ClassifierOutputTarget(2)])
    # pytorch-grad-cam min-max scales, resizes with OpenCV, then scales again; apply the same display steps
    # to cnnlens' layer-resolution map so that the comparison checks the Grad-CAM computation itself.
    size = (x.shape[-1], x.shape[-2])
    shown = scale_cam_image(scale_cam_image(ours.raw.numpy(), size))
    np.testing.assert_allclose(shown, theirs, rtol=1e-3, atol=1e-3)
    assert ours.map.shape == (2, *x.shape[-2:])


@pytest.mark.parametrize("arch,fc", [("default", "fc"), ("resnet18", "fc")])
def test_cam_matches_torchcam(arch, fc, default_model):
    from torchcam.methods import CAM

    model, reference, x = _setup(arch, default_model)
    layer = CAM_LAYERS[arch]
    ours = cl.cam(model, x, [3, 4], layer=layer).raw
    with CAM(reference, target_layer=layer, fc_layer=fc) as extractor:
        out = reference(x)
        theirs = extractor([3, 4], out, normalized=False)[0]
    close(ours, theirs, rtol=1e-4)


@pytest.mark.parametrize("arch,hide,baseline", [("default", "gray", 0.5), ("resnet18", "zero", 0.0),
                                                ("mobilenet_v3_small", "gray", 0.5)])
def test_lime_matches_captum_on_the_same_samples(arch, hide, baseline, default_model):
    """captum's Lime, fed cnnlens' superpixels and on/off patterns, fits the same superpixel weights."""
    model, reference, x = _setup(arch, default_model)
    x = x[:1]
    ours = cl.lime(model, x[0], 0, samples=96, segmentation="slic", segments=20, kernel_width=0.25, hide=hide, seed=5)
    patterns = ours.patterns.float()
    assert patterns.shape == (96, len(ours.weights)) and bool((patterns[0] == 1).all())

    def replay(_inputs, **_kwargs):
        for row in patterns:
            yield row[None]

    def kernel(_original, _perturbed, interpretable, **_kwargs):  # LIME's kernel on the cosine distance
        on = interpretable.float().sum()
        distance = 1 - on / (on.sqrt() * interpretable.numel() ** 0.5 + 1e-12)
        return torch.exp(-(distance**2) / 0.25**2).sqrt()

    lime = Lime(lambda inp: torch.softmax(reference(inp), 1), interpretable_model=SkLearnRidge(alpha=1.0),
                similarity_func=kernel, perturb_func=replay)
    theirs = lime.attribute(x, target=0, n_samples=96, perturbations_per_eval=32, baselines=baseline,
                            feature_mask=ours.segments[None, None], return_input_shape=False)
    close(ours.weights, theirs[0], rtol=1e-3)
