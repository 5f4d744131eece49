"""Code inversion (Mahendran & Vedaldi 2015): an image whose representation at a layer matches a given one.

Minimizes, over [0, 1] images ``x``,

    ‖Φ(x) − Φ₀‖² / ‖Φ₀‖²  +  λ_α · R_α(x)  +  λ_TV · R_TV(x),

with Φ₀ the representation of the given image at ``layer``. The regularizers are
normalized by the image range as in the paper: with pixels measured from
mid-gray and B = 80/255 (the paper's B = 80 for mean-subtracted 0–255 images),
``R_α = mean(|x − ½|^α) / B^α`` (:func:`~cnnlens.synthesize.alpha_norm`) and
``R_TV = TV^β(x) / V^β`` with V = B / 6.5 (:func:`~cnnlens.synthesize.total_variation`,
a mean over pixels), so a natural image scores about 1 on each.

Optimization follows the paper's code: gradient descent with momentum 0.9
from small noise around gray, the learning rate dropping 10× twice (a quarter
of the steps at the full rate, half at a tenth, a quarter at a hundredth;
400 steps by default), and pixels kept in [0, 1] (the paper's box
constraint). Each image's gradient is divided by its RMS before the momentum
update, so a step at the full rate moves pixels by ``LR`` (in RMS) whatever
the scale of the model's activations, and the same settings work on any model.

Defaults per depth: the depth of a layer is its receptive field relative to
the image side (0 at the pixels, 1 when a unit sees the whole image or the
output is not spatial). The TV weight grows with depth on a log scale, from
``TV_SHALLOW`` = 0.005 to ``TV_DEEP`` = 0.5 (the paper, too, regularizes deep
layers more, whose representations say less about the pixels): on the
default model stage1…stage4 get 0.007, 0.014, 0.058, 0.18, close to the
values that gave the best correlation with the original at each depth in a
scan of λ_TV from 0.001 to 3.
The α-norm weight is ``ALPHA_WEIGHT`` = 0.001 at every depth, enough to keep
pixels away from saturation without pulling them to gray.

``layer`` may be a list: one reconstruction per layer (per image), all in one
batched optimization in which each image is scored against its own layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Real
from typing import Any

import torch
from torch import nn

from ..core.hooks import capture
from ..core.model import LayerInfo
from ..core.objectives import Context, Custom
from ..core.progress import CancelToken, ProgressFn, Steps
from ..core.results import Synthesis
from ..core.session import look, redone_when_weights_move
from ..explain._common import generator, positive_int
from .regularizers import AlphaNorm, TotalVariation

STEPS = 400  # the paper's code
MOMENTUM = 0.9
LR = 0.03  # RMS pixel change of a step at the full rate (the gradient is normalized per image)
SCHEDULE = ((0.25, 1.0), (0.75, 0.1), (1.0, 0.01))  # (fraction of the steps, learning-rate factor)
B = 80 / 255  # the paper's pixel range, in [0, 1] units
V = B / 6.5  # the paper's typical variation between neighbouring pixels
TV_SHALLOW, TV_DEEP = 0.005, 0.5  # λ_TV at depth 0 and depth 1 (log-interpolated)
ALPHA_WEIGHT = 1e-3  # λ_α
NOISE = 1e-2  # standard deviation of the start around gray


def depth(info: LayerInfo, size: tuple[int, int]) -> float:
    """How deep a layer is, for the defaults: its receptive field over the image's longer side, at most 1."""
    return min(1.0, info.rf_size / max(size))


def default_tv(d: float) -> float:
    """λ_TV at depth ``d`` in [0, 1]."""
    return TV_SHALLOW * (TV_DEEP / TV_SHALLOW) ** d


def _weight(value: Any, argument: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{argument} must be a number or None (the default for the layer's depth), "
                        f"got {type(value).__name__}.")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{argument} must be ≥ 0, got {value!r}.")
    return float(value)


def _exponent(value: Any, argument: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{argument} must be a number, got {type(value).__name__}.")
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"{argument} must be ≥ 1, got {value!r}.")
    return float(value)


def _rate(step: int, steps: int) -> float:
    for fraction, factor in SCHEDULE:
        if step < fraction * steps:
            return factor
    return SCHEDULE[-1][1]


@redone_when_weights_move
def invert(model: nn.Module, image: Any, layer: Any, *, steps: int | None = None, alpha: float = 6,
           lambda_alpha: float | None = None, beta: float = 2, lambda_tv: float | None = None,
           seed: int | None = None, progress: ProgressFn | None = None, cancel: CancelToken | None = None,
           partial: Callable[[Synthesis], None] | None = None) -> Synthesis:
    """Reconstruct ``image`` from its representation at ``layer`` (a name or module; a list: one each).

    See the module doc. ``steps`` (default 400), ``alpha``/``lambda_alpha`` the α-norm and its weight,
    ``beta``/``lambda_tv`` the TV^β exponent and weight (None: the default for each layer's depth).
    Returns a :class:`Synthesis`: ``images`` one reconstruction per image and layer (image-major, at the
    model's input size), ``history`` the normalized reconstruction error ‖Φ(x) − Φ₀‖² / ‖Φ₀‖² per step
    (steps×N), ``params`` the weights used per layer. ``partial`` receives one every few steps.
    """
    steps = STEPS if steps is None else positive_int(steps, "steps")
    alpha = _exponent(alpha, "alpha")
    beta = _exponent(beta, "beta")
    lambda_alpha = _weight(lambda_alpha, "lambda_alpha")
    lambda_tv = _weight(lambda_tv, "lambda_tv")
    if partial is not None and not callable(partial):
        raise TypeError(f"partial must be a callable or None, got {type(partial).__name__}.")
    layers = list(layer) if isinstance(layer, (list, tuple)) else [layer]
    if not layers:
        raise ValueError("layer: give at least one layer (a name such as 'stage2', or a module of the model).")
    with look(model) as s:
        x0 = s.prepare(image, "image").x.clamp(0, 1)
        size = tuple(x0.shape[-2:])
        infos = []
        for item in layers:
            if item is None or not isinstance(item, (str, nn.Module)):
                raise TypeError(f"layer must be a layer name (str), a module of the model or a list of them, "
                                f"got {type(item).__name__}.")
            infos.append(s.layer(item, size, spatial=False, argument="layer"))
        names = [info.name for info in infos]
        needed = Custom(lambda acts, logits: None, names, "layers", needs_logits=False)
        with torch.no_grad(), capture(s.net, set(names)) as cap:
            s.run(x0, needed, cap)
            targets = {name: cap[name].detach().clone() for name in set(names)}
        b, n_layers = len(x0), len(names)
        n = b * n_layers
        # item i = image i // n_layers reconstructed from layer i % n_layers
        which = [names[i % n_layers] for i in range(n)]
        source = torch.arange(n, device=x0.device) // n_layers
        depths = [depth(info, size) for info in infos]
        tv_weights = [default_tv(d) if lambda_tv is None else lambda_tv for d in depths]
        alpha_weights = [ALPHA_WEIGHT if lambda_alpha is None else lambda_alpha for _ in depths]
        per_item = lambda values: torch.tensor([values[i % n_layers] for i in range(n)],  # noqa: E731
                                               device=x0.device, dtype=x0.dtype)
        w_tv, w_alpha = per_item(tv_weights), per_item(alpha_weights)
        alpha_norm, tv = AlphaNorm(alpha), TotalVariation(beta)
        norms = {name: targets[name].flatten(1).pow(2).sum(1).clamp(min=1e-12) for name in targets}

        groups = [(name, [i for i in range(n) if which[i] == name]) for name in dict.fromkeys(names)]
        groups = [(name, torch.tensor(items, device=x0.device), source[items]) for name, items in groups]

        def errors(acts: dict[str, torch.Tensor]) -> torch.Tensor:
            """‖Φ(x) − Φ₀‖² / ‖Φ₀‖² of each image, against its own layer and source image."""
            out = torch.zeros(n, device=x0.device, dtype=torch.float32)
            for name, items, sources in groups:
                diff = (acts[name][items] - targets[name][sources]).flatten(1)
                out = out.index_put((items,), (diff.pow(2).sum(1) / norms[name][sources]).float())
            return out

        gen = generator(seed, torch.device("cpu"))
        noise = torch.randn((n, *x0.shape[1:]), generator=gen).to(x0)
        x = (0.5 + NOISE * noise).clamp(0, 1)
        velocity = torch.zeros_like(x)
        history = []
        counter = Steps(steps, progress, cancel)
        counter.check()
        params = {"layers": names, "steps": steps, "alpha": alpha, "beta": beta, "lambda_alpha": alpha_weights,
                  "lambda_tv": tv_weights, "depth": depths, "seed": seed}
        descriptions = [f"invert({name})" for name in which]
        for step in range(steps):
            x = x.detach().requires_grad_(True)
            with torch.enable_grad(), capture(s.net, set(names)) as cap:
                s.run(x, needed, cap)
                error = errors(cap.activations)
                ctx = Context(x, {}, None)
                loss = error + w_alpha * alpha_norm(ctx) / B**alpha + w_tv * tv(ctx) / V**beta
                (grad,) = torch.autograd.grad(loss.sum(), x)
            history.append(error.detach().float().cpu())
            with torch.no_grad():
                rms = grad.pow(2).flatten(1).mean(1).sqrt().clamp(min=1e-12).view(-1, 1, 1, 1)
                velocity = MOMENTUM * velocity - _rate(step, steps) * LR * grad / rms
                x = (x + velocity).clamp(0, 1)
            counter.advance(1)
            if partial is not None and (step + 1) % 20 == 0 and step + 1 < steps:
                partial(Synthesis(x.detach().cpu(), torch.stack(history), [[] for _ in range(n)], descriptions,
                                  dict(params, steps=step + 1)))
        return Synthesis(x.detach().cpu(), torch.stack(history), [[] for _ in range(n)], descriptions, params)
