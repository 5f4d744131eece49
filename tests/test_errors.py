"""Bad input gets a clear ValueError/TypeError naming the argument and the valid choices; the model is untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cnnlens as cl

from .conftest import assert_unchanged, random_model, snapshot


@pytest.fixture
def shapes(default):
    model, data = default
    before = snapshot(model)
    yield model, data[0][0]
    assert_unchanged(model, before)


def test_unknown_layer_lists_valid_layers_and_closest_match(shapes):
    model, x = shapes
    with pytest.raises(ValueError) as info:
        cl.gradcam(model, x, layer="stage5")
    message = str(info.value)
    assert "Unknown layer 'stage5'" in message and "stage4" in message and "Did you mean 'stage4'?" in message
    with pytest.raises(ValueError, match="Did you mean 'stage3.conv2'"):
        cl.saliency(model, x, "stage3.con2:1")
    with pytest.raises(TypeError, match="layer must be a layer name"):
        cl.gradcam(model, x, layer=4)
    with pytest.raises(ValueError, match=r"layer 'gap' has no spatial output \(its output is \(128, 1, 1\)\)"):
        cl.gradcam(model, x, layer="gap")


@pytest.mark.parametrize("method", ["saliency", "gradcam", "deconvnet", "guided_backprop", "occlusion"])
def test_unit_out_of_range(shapes, method):
    model, x = shapes
    with pytest.raises(ValueError, match=r"unit .*999.* out of range; valid: 0\.\.127"):
        getattr(cl, method)(model, x, "stage4:999")


@pytest.mark.parametrize("method", ["saliency", "smoothgrad", "integrated_gradients", "gradcam", "cam",
                                    "occlusion", "lime", "input_x_gradient"])
def test_class_out_of_range(shapes, method):
    model, x = shapes
    with pytest.raises(ValueError, match=r"class 8 is out of range; valid: 0\.\.7"):
        getattr(cl, method)(model, x, 8)


def test_target_of_wrong_type_or_form(shapes):
    model, x = shapes
    with pytest.raises(TypeError, match="target must be"):
        cl.saliency(model, x, 2.5)
    with pytest.raises(ValueError, match="'layer:unit'"):
        cl.saliency(model, x, "stage4")
    with pytest.raises(ValueError, match="neither a class name.*Did you mean 'star'"):
        cl.saliency(model, x, "stra")
    for bad in (True, [1.5], torch.tensor([0.5])):
        with pytest.raises(TypeError, match="target must be"):
            cl.saliency(model, x, bad)
    with pytest.raises(TypeError, match="index must be a class index"):
        cl.logit("star")


def test_a_target_below_grad_cams_layer_is_a_clear_error(shapes):
    model, x = shapes
    with pytest.raises(ValueError, match="'stage2:1' does not depend on layer 'stage3'"):
        cl.gradcam(model, x, "stage2:1", layer="stage3")


def test_empty_batch(shapes):
    model, _ = shapes
    with pytest.raises(ValueError, match="x is an empty batch"):
        cl.saliency(model, torch.rand(0, 3, 64, 64))


def test_wrong_channel_count(shapes):
    model, _ = shapes
    with pytest.raises(ValueError, match="x has 5 channels; the model expects 3"):
        cl.saliency(model, torch.rand(5, 64, 64))
    with pytest.raises(TypeError, match="x must be a tensor, numpy array, PIL image, file path"):
        cl.saliency(model, {"image": 1})


def test_wrong_size_for_a_fixed_size_model():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 32 * 32, 5))
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"x of size \(48, 48\) does not fit the model.*input_size"):
        cl.saliency(model, torch.rand(3, 48, 48))
    assert_unchanged(model, before)
    cl.configure(model, input_size=32)
    assert cl.saliency(model, torch.rand(3, 48, 48)).map.shape == (48, 48)  # resized in, map back at 48×48


def test_occlusion_geometry(shapes):
    model, x = shapes
    with pytest.raises(ValueError, match=r"mask_size 65 is larger than the image \(64×64\); valid: 1\.\.64"):
        cl.occlusion(model, x, mask_size=65)
    with pytest.raises(ValueError, match="stride must be ≥ 1, got 0"):
        cl.occlusion(model, x, stride=0)
    with pytest.raises(ValueError, match="stride must be ≥ 1, got -2"):
        cl.occlusion(model, x, stride=-2)
    with pytest.raises(ValueError, match="Unknown mask_value 'purple'. Valid: gray, mean, zero, blur"):
        cl.occlusion(model, x, mask_value="purple")


@pytest.mark.parametrize("call", [
    lambda m, x: cl.lime(m, x, samples=0),
    lambda m, x: cl.smoothgrad(m, x, samples=0),
    lambda m, x: cl.integrated_gradients(m, x, steps=0),
    lambda m, x: cl.lime(m, x, features=-1),
])
def test_counts_must_be_positive(shapes, call):
    model, x = shapes
    with pytest.raises(ValueError, match="must be ≥ 1"):
        call(model, x)


def test_unknown_choices_name_the_valid_ones(shapes):
    model, x = shapes
    with pytest.raises(ValueError, match="Valid: slic, grid"):
        cl.lime(model, x, segmentation="felzenszwalb")
    with pytest.raises(ValueError, match="Valid modes: max, map"):
        cl.deconvnet(model, x, "stage4:1", mode="top")
    with pytest.raises(ValueError, match="Valid rules: gausslegendre"):
        cl.integrated_gradients(model, x, rule="simpson")


class _NaNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3))) / 0.0 * 0.0


def test_nan_model_output_is_reported():
    model = _NaNNet()
    before = snapshot(model)
    for method in (cl.saliency, cl.gradcam, cl.occlusion):
        with pytest.raises(ValueError, match="NaN or Inf"):
            method(model, torch.rand(3, 16, 16))
    assert_unchanged(model, before)


def test_cam_without_spatial_layer_or_without_gap_head():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    with pytest.raises(ValueError, match="no layer with spatial output"):
        cl.cam(mlp, torch.rand(3, 8, 8))
    vgg = random_model("vgg11_bn")
    before = snapshot(vgg)
    with pytest.raises(ValueError, match="global average pooling.*cnnlens.gradcam"):
        cl.cam(vgg, torch.rand(3, 64, 64))
    assert_unchanged(vgg, before)


def test_tuple_output_needs_a_selector():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, padding=1)
            self.fc = nn.Linear(6, 4)

        def forward(self, x):
            f = self.conv(x).relu()
            return self.fc(f.mean((2, 3))), f

    model = TwoHeads()
    with pytest.raises(TypeError, match=r"returned a tuple.*configure\(model, output=0\)"):
        cl.saliency(model, torch.rand(3, 16, 16))
    cl.configure(model, output=0)
    assert cl.gradcam(model, torch.rand(3, 16, 16), 1).map.shape == (16, 16)


def test_bad_progress_and_seed(shapes):
    model, x = shapes
    with pytest.raises(TypeError, match="progress must be a callable"):
        cl.occlusion(model, x, progress=3)
    with pytest.raises(TypeError, match="seed must be an int"):
        cl.lime(model, x, seed="abc")


def test_views_need_a_spatial_layer_and_say_so():
    from cnnlens.widgets import ActivationsView, AttributionView, DeconvView

    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10), nn.ReLU(), nn.Linear(10, 3))
    for view in (AttributionView, ActivationsView, DeconvView, cl.Lens):
        with pytest.raises(ValueError, match="model: Sequential has no spatial layer"):
            view(mlp, torch.rand(2, 3, 16, 16))


def test_configure_checks_mean_std_and_class_names_against_the_model():
    """A mean of 2 values on a 3-channel model was accepted and every later call failed on a tensor size; a
    string of class names was split into letters; too few names mixed names and numbers silently."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    with pytest.raises(ValueError, match="one value per input channel each; got 2 and 3"):
        cl.configure(model, mean=(0.5, 0.5), std=(0.2, 0.2, 0.2))
    with pytest.raises(ValueError, match="3-channel images: give 3 values each"):
        cl.configure(model, mean=(0.5,) * 4, std=(0.2,) * 4)
    with pytest.raises(TypeError, match="classes must be a list of class names"):
        cl.configure(model, classes="abcde")
    cl.configure(model, mean=(0.5,), std=(0.2,))  # one value for every channel is fine
    cl.configure(model, classes=["a", "b"])
    with pytest.warns(UserWarning, match="scores 5 classes but has 2 class names"):
        cl.saliency(model, torch.rand(3, 16, 16), 0)


def test_switches_must_be_booleans():
    """``relu="no"`` counted as true and was recorded as the string."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    x = torch.rand(3, 16, 16)
    for call, argument in ((lambda: cl.gradcam(model, x, relu="no"), "relu"),
                           (lambda: cl.smoothgrad(model, x, absolute=1), "absolute"),
                           (lambda: cl.sanity_check(model, x, "saliency", keep_maps=None), "keep_maps"),
                           (lambda: cl.check_explanation(model, x, "saliency", sanity="yes"), "sanity")):
        with pytest.raises(TypeError, match=f"{argument} must be True or False"):
            call()


def test_image_errors_name_the_argument_the_function_calls_image(shapes):
    """Explanation.figure, deepdream and invert take ``image``; the shared reader's messages said ``x``."""
    model, x = shapes
    explanation = cl.gradcam(model, x)
    for call in (lambda: explanation.figure("/no/such.png"), lambda: cl.deepdream(model, "/no/such.png"),
                 lambda: cl.invert(model, "/no/such.png", "stage1")):
        with pytest.raises(ValueError, match=r"^image: no image file at '/no/such.png'"):
            call()
    with pytest.raises(ValueError, match=r"^x: no image file"):
        cl.gradcam(model, "/no/such.png")
