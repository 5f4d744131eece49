"""core/data.py: every kind of source gives the same numbered batches of images and labels."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from cnnlens.core.data import batches, count


def _collect(source, **kw):
    indices, labels, images = [], [], []
    for batch in batches(source, **kw):
        assert len(batch.indices) == len(batch.images) == len(batch.labels)
        indices += batch.indices
        labels += batch.labels
        images += [torch.as_tensor(image) for image in batch.images]
    return indices, labels, torch.stack(images)


@pytest.fixture
def images():
    return torch.rand(10, 3, 8, 8)


def test_every_source_gives_the_same_numbered_images(images):
    labels = list(range(10))
    dataset = TensorDataset(images, torch.tensor(labels))
    dicts = [{"pixel_values": im, "label": lab} for im, lab in zip(images, labels)]
    for source, with_labels in ((images, False), (list(images), False), (dataset, True), (dicts, True),
                                (DataLoader(dataset, batch_size=3), True)):
        got_indices, got_labels, got_images = _collect(source, batch_size=4)
        assert got_indices == list(range(10)) and torch.equal(got_images, images), type(source)
        assert got_labels == (labels if with_labels else [None] * 10)
        assert count(source) == 10


def test_a_subset_keeps_the_positions_of_the_source(images):
    dataset = TensorDataset(images, torch.arange(10))
    for source in (images, dataset):
        got_indices, got_labels, got_images = _collect(source, batch_size=2, indices=[7, 1, 8])
        assert got_indices == [7, 1, 8] and torch.equal(got_images, images[[7, 1, 8]])


def test_bad_sources_say_what_works():
    with pytest.raises(TypeError, match="dataset"):
        count(object())
    with pytest.raises(ValueError, match="DataLoader"):
        list(batches(DataLoader(TensorDataset(torch.rand(2, 3, 4, 4))), indices=[0]))
