"""The embedded default: offline, small, accurate, and its explanations point at the right object."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import cnnlens as cl
from cnnlens.zoo.shapes_data import ShapesDataset
from cnnlens.zoo.train import WEIGHTS, evaluate

N = 100
TOLERANCE = 4  # the pointing game's 15 px at 224 px (Zhang et al. 2016), scaled to 64 px


def test_weights_are_shipped_and_small():
    assert WEIGHTS.is_file()
    assert WEIGHTS.stat().st_size < 5 * 2**20


def test_held_out_accuracy_is_at_least_97_percent(default):
    model, data = default
    assert evaluate(model, data) >= 0.97
    assert not model.training  # evaluate() on the default leaves it in eval mode, as shapes() returned it


def test_data_is_deterministic_and_well_formed():
    a, b = ShapesDataset(12, seed=5), ShapesDataset(12, seed=5)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, ShapesDataset(12, seed=6).images)
    image, label, mask = a[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert 0 <= float(image.min()) and float(image.max()) <= 1
    assert mask.shape == (64, 64) and mask.dtype == torch.bool and mask.any()
    assert len(a.classes) >= 8 and 0 <= label < len(a.classes)


def test_colour_alone_does_not_give_the_class():
    data = ShapesDataset(400, seed=9)
    colours = torch.stack([data.images[i][:, data.masks[i]].mean(1) for i in range(len(data))])
    centroids = torch.stack([colours[data.labels == c].mean(0) for c in range(len(data.classes))])
    nearest = torch.cdist(colours, centroids).argmin(1)
    assert float((nearest == data.labels).float().mean()) < 0.3  # chance is 1/8


def _pointing_rate(maps: torch.Tensor, masks: torch.Tensor, tolerance: int) -> float:
    region = masks.float()[:, None]
    if tolerance:
        region = F.max_pool2d(region, 2 * tolerance + 1, 1, tolerance)
    region = region[:, 0].bool()
    peaks = maps.flatten(1).argmax(1)
    return float(region.flatten(1)[torch.arange(len(maps)), peaks].float().mean())


def test_gradcam_points_inside_the_object(default):
    model, data = default
    maps = cl.gradcam(model, data.images[:N], data.labels[:N].tolist()).map
    assert _pointing_rate(maps, data.masks[:N], TOLERANCE) >= 0.9
    assert _pointing_rate(maps, data.masks[:N], 0) >= 0.9


def test_occlusion_points_inside_the_object(default):
    """The class probability map (Zeiler & Fergus' definition), on held-out images not used elsewhere here."""
    model, data = default
    for images in (slice(0, N), slice(N, 3 * N)):
        result = cl.occlusion(model, data.images[images], data.labels[images].tolist(), mask_size=12, stride=4)
        assert result.target.startswith("prob(")
        assert _pointing_rate(-result.map, data.masks[images], TOLERANCE) >= 0.9
        assert _pointing_rate(result.drop_map, data.masks[images], TOLERANCE) >= 0.9
    logit = cl.occlusion(model, data.images[:N], cl.logit(data.labels[:N]), mask_size=12, stride=4)
    assert _pointing_rate(-logit.map, data.masks[:N], TOLERANCE) >= 0.9


def test_occlusion_map_keeps_its_order():
    """No ties at the extreme: the most damaging mask position is one place, not a block of equal pixels."""
    model, data = cl.zoo.shapes()
    result = cl.occlusion(model, data.images[:8], data.labels[:8].tolist(), mask_size=12, stride=4)
    flat = result.map.flatten(1)
    ties = (flat == flat.min(1, keepdim=True).values).sum(1)
    assert int(ties.max()) <= 2, ties
    assert result.map.dtype == torch.float64


def test_occluding_the_object_flips_the_label_map_to_the_distractor(default):
    """Zeiler & Fergus Fig. 7(e): where the mask hides the labelled shape, the distractor's class wins."""
    model, data = default
    with_distractor = [i for i in range(len(data)) if data.distractors[i] >= 0][:40]
    flipped = 0
    for i in with_distractor:
        cy, cx, radius = data.objects[i].tolist()
        result = cl.occlusion(model, data.images[i], int(data.labels[i]), mask_size=min(int(2.4 * radius) + 1, 63),
                              stride=2)
        flipped += int(result.label_map[int(cy), int(cx)]) == int(data.distractors[i])
        assert int(result.predictions[0].index) == int(data.labels[i])
    assert flipped / len(with_distractor) >= 0.8
