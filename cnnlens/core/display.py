"""Images out: tensors → uint8 RGB, maps → colours through a colormap, overlays and label colours.

Matplotlib is imported lazily and only for its colormaps.
"""

from __future__ import annotations

import numpy as np
import torch

COLORMAPS = ("magma", "viridis", "gray", "jet", "RdBu_r")  # the front end's colormaps, in its order


GRAY = 0.5  # a receptive field's part outside the image, in tiles: no pixels (and, in a projection, no signal)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """C×H×W float in [0, 1] → H×W×3 uint8 (gray repeated)."""
    array = image.detach().float().cpu().clamp(0, 1)
    if array.shape[0] == 1:
        array = array.expand(3, -1, -1)
    return (array[:3].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def colorize(m: torch.Tensor, cmap: str = "magma", signed: bool = False,
             vmax: float | None = None) -> np.ndarray:
    """An H×W map → H×W×3 uint8 through a matplotlib colormap.

    ``signed`` centres the colours on 0. The scale is ``vmax`` when given,
    else the 99.5th percentile of the magnitudes, so that a few extreme
    gradients do not leave the rest of the map black.
    """
    from matplotlib import colormaps

    values = m.detach().float().cpu().numpy()
    if signed:
        scale = vmax or float(np.quantile(np.abs(values), 0.995)) or 1.0
        norm = 0.5 + 0.5 * values / scale
    else:
        low = float(values.min())
        scale = (vmax - low) if vmax is not None else float(np.quantile(values, 0.995) - low)
        norm = (values - low) / (scale or 1.0)
    rgba = colormaps[cmap](np.clip(norm, 0, 1))
    return (rgba[..., :3] * 255 + 0.5).astype(np.uint8)


def overlay(image: torch.Tensor, m: torch.Tensor, cmap: str = "magma", alpha: float = 0.55,
            signed: bool = False) -> np.ndarray:
    """Heatmap ``m`` blended over ``image`` (C×H×W in [0, 1]) → H×W×3 uint8."""
    heat = colorize(m, cmap, signed).astype(np.float32)
    base = to_uint8(image).astype(np.float32)
    return (base * (1 - alpha) + heat * alpha + 0.5).astype(np.uint8)


def label_colors(n: int) -> np.ndarray:
    """``n`` distinct RGB uint8 colours for categorical maps (occlusion's label map)."""
    from matplotlib import colormaps

    if n > 20:  # beyond the qualitative palettes: hues spread evenly, alternating lightness
        from matplotlib.colors import hsv_to_rgb

        hsv = [((i * 0.618034) % 1.0, 0.75, 0.95 if i % 2 else 0.7) for i in range(n)]
        return (hsv_to_rgb(np.array(hsv).reshape(-1, 3)) * 255).astype(np.uint8)
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return (np.array([cmap(i)[:3] for i in range(n)]) * 255).astype(np.uint8)
