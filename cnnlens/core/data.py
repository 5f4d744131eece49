"""Data as cnnlens reads it: any dataset, loader, tensor or list of images, in numbered batches.

A source may be a B×C×H×W tensor or array, a list of images, a map-style
dataset (items: an image; a tuple/list with the image first and, when it is
int-like, the label second — torchvision's ``(image, label)`` or the shapes
data's ``(image, label, mask)``; or a dict, Hugging Face style, with the image
under the first of ``IMAGE_KEYS`` and the label under the first of
``LABEL_KEYS``) or a ``DataLoader`` over such a dataset. :func:`batches`
yields the raw images of each batch with their labels and their positions in
the source, so everything computed from a batch can point back at an image.
Nothing here knows the model: ``Session.prepare`` turns raw images into the
model's input.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

IMAGE_KEYS = ("image", "img", "pixel_values", "input", "x")  # a dict item's image: the first of these present
LABEL_KEYS = ("label", "labels", "target", "y")  # and its label: the first of these present (if int-like)


def split_item(item: Any) -> tuple[Any, int | None]:
    """(image, label or None) of one dataset item: an image, a tuple/list or a dict (see the module doc)."""
    if isinstance(item, Mapping):
        key = next((k for k in IMAGE_KEYS if k in item), None)
        if key is None:
            found = ", ".join(repr(k) for k in item) or "none"
            raise ValueError(f"A dataset item is a dict with keys {found}; cnnlens looks for the image under "
                             f"one of {', '.join(map(repr, IMAGE_KEYS))}. Wrap the dataset so its items are "
                             "(image, label) tuples or use one of those keys.")
        label_key = next((k for k in LABEL_KEYS if k in item), None)
        return item[key], (int_like(item[label_key]) if label_key is not None else None)
    if isinstance(item, (tuple, list)) and item:
        return item[0], (int_like(item[1]) if len(item) > 1 else None)
    return item, None


def int_like(value: Any) -> int | None:
    """``value`` as an int if it is one (Python/numpy integer, 0-d or one-element integer tensor/array)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point() \
            and not value.is_complex() and value.dtype != torch.bool:
        return int(value.item())
    if isinstance(value, np.ndarray) and value.size == 1 and np.issubdtype(value.dtype, np.integer):
        return int(value.item())
    return None


def is_one_image(source: Any) -> bool:
    """Whether ``source`` is a single image (not a collection of them)."""
    if isinstance(source, (str, Path)) or type(source).__module__.startswith("PIL."):
        return True
    if isinstance(source, torch.Tensor):
        return source.dim() in (2, 3)
    if isinstance(source, np.ndarray):
        return source.ndim in (2, 3)  # H×W, H×W×C or C×H×W; a batch is 4-d
    return False


@dataclass
class RawBatch:
    """Images as the source gives them (a tensor batch or a list), their labels and their positions."""

    indices: list[int]
    images: torch.Tensor | np.ndarray | list
    labels: list[int | None]


def count(source: Any) -> int:
    """How many images ``source`` holds (a DataLoader: its dataset's length, or the images it yields)."""
    if isinstance(source, DataLoader):
        try:
            return len(source.dataset)
        except TypeError:
            raise TypeError("data: a DataLoader over an iterable-style dataset has no length; give a map-style "
                            "dataset, a DataLoader over one, a tensor or a list of images.") from None
    if is_one_image(source):
        return 1
    if not hasattr(source, "__len__") or not hasattr(source, "__getitem__"):
        raise TypeError(f"data must be a dataset (with __len__ and __getitem__), a DataLoader, a B×C×H×W tensor "
                        f"or array, or a list of images; got {type(source).__name__}.")
    return len(source)


def batches(source: Any, batch_size: int = 64, *, num_workers: int = 0,
            indices: Sequence[int] | None = None) -> Iterator[RawBatch]:
    """``source`` in batches of raw images with labels and positions; only ``indices`` when given.

    Tensors and arrays are sliced (no copy); datasets and lists go through a ``DataLoader`` with
    ``num_workers`` that keeps items as they are. A DataLoader is iterated as it is (its own batch size and
    workers); its images are numbered by its sampler when that fixes the order (sequential or a
    ``DistributedSampler`` without shuffling), else by the order they arrive in.
    """
    if isinstance(source, DataLoader):
        if indices is not None:
            raise ValueError("data: a DataLoader decides its own order; give its dataset to scan a subset.")
        yield from _loader_batches(source)
        return
    if is_one_image(source):
        source = [source]
    chosen = list(range(count(source))) if indices is None else [int(i) for i in indices]
    if isinstance(source, (torch.Tensor, np.ndarray)):
        for start in range(0, len(chosen), batch_size):
            part = chosen[start:start + batch_size]
            contiguous = part == list(range(part[0], part[0] + len(part)))
            images = source[part[0]:part[0] + len(part)] if contiguous else source[part]
            yield RawBatch(part, images, [None] * len(part))
        return
    loader = DataLoader(_Items(source, chosen), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=_keep_items, generator=torch.Generator())  # its seed draw: not the global RNG
    start = 0
    for items in loader:
        split = [split_item(item) for item in items]
        yield RawBatch(chosen[start:start + len(items)], [image for image, _ in split],
                       [label for _, label in split])
        start += len(items)


class _Items(torch.utils.data.Dataset):
    """The items of ``source`` at ``chosen`` positions, in that order."""

    def __init__(self, source: Any, chosen: list[int]):
        self.source, self.chosen = source, chosen

    def __len__(self) -> int:
        return len(self.chosen)

    def __getitem__(self, i: int) -> Any:
        return self.source[self.chosen[i]]


def _keep_items(items: list) -> list:
    return items


def keeps_order(loader: DataLoader) -> bool:
    """Whether ``loader``'s sampler fixes which dataset item each image is (sequential, or a
    ``DistributedSampler`` without shuffling), so that results can name images by their dataset index."""
    return isinstance(loader.sampler, SequentialSampler) or (
        isinstance(loader.sampler, DistributedSampler) and not loader.sampler.shuffle)


def warn_if_renumbered(data: Any, function: str) -> None:
    """Warn when ``data`` is a DataLoader whose images can only be numbered as they arrive (see :func:`batches`):
    ``function``'s indices would not point into the dataset."""
    if isinstance(data, DataLoader) and not keeps_order(data):
        warnings.warn(f"{function}: this DataLoader shuffles (or samples), so images are numbered in the order they "
                      "arrive and an index does not point into its dataset; pass the dataset itself, or a "
                      "DataLoader with shuffle=False, for indices into it.", stacklevel=3)


def _loader_batches(loader: DataLoader) -> Iterator[RawBatch]:
    order = list(iter(loader.sampler)) if keeps_order(loader) else None
    position = 0
    for batch in loader:
        images, labels = _split_collated(batch)
        n = len(images)
        where = order[position:position + n] if order is not None else list(range(position, position + n))
        position += n
        yield RawBatch(where, images, labels)


def _split_collated(batch: Any) -> tuple[Any, list[int | None]]:
    """A collated batch (a tensor, a tuple/list with images first, a dict, or the list of items itself, as a
    ``collate_fn=lambda b: b`` leaves it) → (images, labels)."""
    if isinstance(batch, list) and batch and all(isinstance(item, (tuple, list, Mapping)) for item in batch) \
            and not is_one_image(batch[0]):
        images, labels = zip(*(split_item(item) for item in batch))
        return list(images), list(labels)
    if isinstance(batch, Mapping):
        key = next((k for k in IMAGE_KEYS if k in batch), None)
        if key is None:
            raise ValueError(f"A DataLoader batch is a dict with keys {', '.join(map(repr, batch))}; cnnlens looks "
                             f"for the images under one of {', '.join(map(repr, IMAGE_KEYS))}.")
        label_key = next((k for k in LABEL_KEYS if k in batch), None)
        images, labels = batch[key], batch[label_key] if label_key is not None else None
    elif isinstance(batch, (tuple, list)) and batch and not is_one_image(batch[0]):
        images, labels = batch[0], batch[1] if len(batch) > 1 else None
    else:
        images, labels = batch, None
    n = len(images)
    if isinstance(labels, (torch.Tensor, np.ndarray)) and len(labels) == n and labels.ndim == 1:
        return images, [int_like(v) for v in labels]
    if isinstance(labels, (list, tuple)) and len(labels) == n:  # a custom collate's list of labels
        return images, [int_like(v) for v in labels]
    return images, [None] * n
