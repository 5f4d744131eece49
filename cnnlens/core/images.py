"""Images in: any image → float tensor in [0, 1] at the model's size; maps resized; Gaussian blur.

Accepted inputs: tensors (C×H×W or B×C×H×W), numpy arrays (H×W×C, C×H×W or
H×W; uint8 or float), PIL images, file paths, and lists of any of these.
Grayscale is repeated to three channels and RGBA loses its alpha when the
model wants RGB. Turning tensors and maps into pixels is ``display.py``'s job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class Batch:
    """A prepared batch: ``x`` (B×C×H×W at the model's size), each image's original size, one image or not."""

    x: torch.Tensor
    sizes: list[tuple[int, int]]
    single: bool


def _pil_to_array(image: Any) -> np.ndarray:
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGB")
    return np.asarray(image)


def _one_image(image: Any, argument: str = "x") -> torch.Tensor:
    """One image → C×H×W float tensor (values as given for float input; uint8 scaled to [0, 1]); errors name
    ``argument``."""
    if isinstance(image, (str, Path)):
        from PIL import Image

        path = Path(image)
        if not path.is_file():
            raise ValueError(f"{argument}: no image file at {str(path)!r}.")
        with Image.open(path) as opened:
            image = _pil_to_array(opened)
    elif type(image).__module__.startswith("PIL."):
        image = _pil_to_array(image)
    if isinstance(image, np.ndarray):
        array = image
        if array.dtype == np.uint8:
            array = array.astype(np.float32) / 255.0
        elif not np.issubdtype(array.dtype, np.floating):
            raise TypeError(f"{argument}: numpy images must be uint8 or float, got {array.dtype}.")
        if array.ndim == 2:
            array = array[None]
        elif array.ndim == 3 and array.shape[-1] in (1, 2, 3, 4) and array.shape[0] not in (1, 2, 3, 4):
            array = array.transpose(2, 0, 1)  # H×W×C → C×H×W
        elif array.ndim != 3:
            raise ValueError(f"{argument}: a numpy image must be H×W, H×W×C or C×H×W, got shape {array.shape}.")
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if isinstance(image, torch.Tensor):
        if image.dim() == 2:
            image = image[None]
        if image.dim() != 3:
            raise ValueError(f"{argument}: an image tensor must be C×H×W, got shape {tuple(image.shape)}.")
        if not image.is_floating_point():
            image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        return image
    raise TypeError(f"{argument} must be a tensor, numpy array, PIL image, file path, or a list of these; "
                    f"got {type(image).__name__}.")


def _fit_channels(image: torch.Tensor, channels: int | None, rgb_like: bool, argument: str = "x") -> torch.Tensor:
    c = image.shape[0]
    if channels is None or c == channels:
        return image
    if channels == 3 and c == 1:
        return image.expand(3, -1, -1)
    if channels == 3 and c in (2, 4) and rgb_like:
        return image[:3] if c == 4 else image[:1].expand(3, -1, -1)  # drop alpha
    if channels == 1 and c in (3, 4) and rgb_like:
        return (image[:3] * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1).to(image)).sum(0, keepdim=True)
    raise ValueError(f"{argument} has {c} channels; the model expects {channels} (the in_channels of its first "
                     f"convolution module). If the model takes {c}-channel images (its stem is written with "
                     "F.conv2d, or another convolution is registered first), tell cnnlens: "
                     f"cnnlens.configure(model, channels={c}).")


def to_batch(x: Any, *, channels: int | None, size: tuple[int, int] | None,
             device: torch.device, dtype: torch.dtype, argument: str = "x") -> Batch:
    """Turn any supported image input into a :class:`Batch` on ``device``; errors name ``argument``."""
    if isinstance(x, (torch.Tensor, np.ndarray)) and x.ndim == 4 and x.shape[0] == 0:
        raise ValueError(f"{argument} is an empty batch (0 images); give at least one image.")
    if (isinstance(x, torch.Tensor) and x.dim() in (3, 4) and x.is_floating_point()
            and (channels is None or x.shape[-3] == channels) and x.numel() > 0
            and (size is None or tuple(x.shape[-2:]) == tuple(size))):
        # already a float batch (or image) the model takes: one copy, nothing to convert
        batch = x.detach().to(device=device, dtype=dtype, copy=True)
        single = batch.dim() == 3
        batch = batch[None] if single else batch
        return Batch(batch, [tuple(batch.shape[-2:])] * len(batch), single)
    single = True
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        images, single = list(x), False
    elif isinstance(x, np.ndarray) and x.ndim == 4:
        images, single = list(x), False
    elif isinstance(x, (list, tuple)):
        if not x:
            raise ValueError(f"{argument} is an empty list; give at least one image.")
        images, single = list(x), False
    else:
        images = [x]
    tensors = []
    for image in images:
        rgb_like = not isinstance(image, torch.Tensor)
        tensors.append(_fit_channels(_one_image(image, argument), channels, rgb_like, argument))
    sizes = [tuple(t.shape[-2:]) for t in tensors]
    if any(min(s) < 1 for s in sizes):
        raise ValueError(f"{argument} has an empty spatial size {sizes[0]}.")
    target = size
    if target is None and len(set(sizes)) > 1:
        raise ValueError(f"{argument}: images of different sizes {sorted(set(sizes))} need a common input_size; "
                         "set one with cnnlens.configure(model, input_size=...).")
    out = []
    for t in tensors:
        t = t.to(device=device, dtype=dtype)
        if target is not None and tuple(t.shape[-2:]) != tuple(target):
            t = F.interpolate(t[None], size=target, mode="bilinear", align_corners=False, antialias=True)[0]
        out.append(t)
    return Batch(torch.stack(out), sizes, single)


def resize_map(m: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize a B×h×w (or h×w) map to ``size``; ``mode='nearest'`` for labels."""
    squeeze = m.dim() == 2
    m4 = m[None, None] if squeeze else m[:, None]
    if tuple(m4.shape[-2:]) != tuple(size):
        if mode == "nearest":
            m4 = F.interpolate(m4.float(), size=size, mode="nearest").to(m.dtype)
        else:
            m4 = F.interpolate(m4 if m4.dtype == torch.float64 else m4.float(), size=size, mode="bilinear",
                               align_corners=False)
    return m4[0, 0] if squeeze else m4[:, 0]


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a B×C×H×W tensor (reflect padding)."""
    radius = max(int(3 * sigma), 1)
    grid = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (grid / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    pad = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    if pad < radius:
        kernel = kernel[radius - pad: radius + pad + 1]
        kernel = kernel / kernel.sum()
    y = F.pad(x, (pad, pad, 0, 0), mode="reflect")
    y = F.conv2d(y, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.pad(y, (0, 0, pad, pad), mode="reflect")
    return F.conv2d(y, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


_LEVEL = 1e3  # map_ssim moves maps whose mean is beyond this many data ranges from 0 back to it


def map_ssim(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """SSIM of two 2-D maps (scikit-image, in float64, a 7-pixel window or the largest odd one that fits); maps
    too small for a window (a side under 3) get one minus the mean absolute difference, on the same range.

    A map can vary by far less than its level (a random network's probability of a class: 1e-3 ± 1e-10); SSIM's
    variances, computed as E[x²] − E[x]², then cancel to noise (values of ±10⁷ were seen). Both maps are moved
    by the same amount until their level is ``_LEVEL`` data ranges: that changes only SSIM's luminance term, by
    less than 1e-6 (it is 1 − (μa − μb)² / (μa² + μb² + C1))."""
    from skimage.metrics import structural_similarity

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    side = min(a.shape)
    if side < 3:
        return float(1 - np.abs(a - b).mean() / data_range)
    level = float(b.mean())
    if abs(level) > _LEVEL * data_range:
        shift = level - math.copysign(_LEVEL * data_range, level)
        a, b = a - shift, b - shift
    return float(structural_similarity(a, b, data_range=data_range,
                                       win_size=min(7, side if side % 2 else side - 1)))

