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
    items = list(zip(images, labels))
    keep_items = DataLoader(items, batch_size=3, collate_fn=lambda b: b)  # the list of (image, label) items
    label_list = DataLoader(items, batch_size=3, collate_fn=lambda b: (torch.stack([x for x, _ in b]),
                                                                        [y for _, y in b]))  # labels as ints
    for source, with_labels in ((images, False), (list(images), False), (dataset, True), (dicts, True),
                                (DataLoader(dataset, batch_size=3), True), (keep_items, True), (label_list, True)):
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


def test_a_shuffling_loader_is_numbered_as_it_arrives_and_scan_and_embed_say_so(images):
    """Indices of a shuffled DataLoader count arrival order and do not point into the dataset: a warning."""
    import cnnlens as cl

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 2))
    shuffled = DataLoader(TensorDataset(images, torch.arange(10) % 2), batch_size=4, shuffle=True)
    with pytest.warns(UserWarning, match="scan: this DataLoader shuffles"):
        cl.scan(model, shuffled, k=2)
    with pytest.warns(UserWarning, match="embed: this DataLoader shuffles"):
        cl.embed(model, shuffled, method="pca")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cl.scan(model, DataLoader(TensorDataset(images, torch.arange(10) % 2), batch_size=4), k=2)


def test_images_of_different_sizes_one_per_batch_are_refused_by_the_scan():
    """Each batch of one ran at its own size and positions were decoded on the first image's grid."""
    import cnnlens as cl

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"different sizes \(32, 32\) and \(40, 48\) need a common input_size"):
        cl.scan(model, [torch.rand(3, 32, 32), torch.rand(3, 40, 48)], k=2, batch_size=1)
