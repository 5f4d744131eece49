"""Whether an explanation deserves trust: the model-parameter randomization test, and all checks of one map.

Adebayo et al. 2018 ("Sanity Checks for Saliency Maps"): if a map explains the
model, it must change when the model's learned weights are replaced by random
ones. The weights are re-initialised layer by layer from the top (the logits)
down — *cascading*, each step keeping the layers randomized before it — or one
layer at a time (*independent*), and each randomized model's map is compared
with the trained model's by Spearman rank correlation (of the signed maps and
of their absolute values) and SSIM. The randomization happens on a private
copy of the weights (:func:`cnnlens.core.shadow.private_copy`); the user's
model is never written.

Re-initialisation, with a private seeded generator: weights of two or more
dimensions from PyTorch's default for convolutions and linear layers
(uniform ±1/√fan_in), the biases of such layers from the same range, and any
other parameter (a normalization layer's scale and shift) from a normal with
that tensor's own mean and standard deviation (its scale kept, its learned
pattern gone). Buffers (BatchNorm's running statistics) are kept.

The verdict reads the whole cascade, not only its last entry: with every
layer random, guided backprop still draws the image's edges and texture (it
partly reconstructs the image whatever the weights), and on the default
model's textured backgrounds its last-entry rank correlation is as low as the
gradient's; what sets it apart, as in the paper's figures, is that its map
stays put while the top layers are randomized. Measured on the default model
(8 images, 3 seeds): mean |Spearman| of the absolute maps 0.59–0.60 for guided
backprop, 0.28–0.35 for the gradient, 0.07–0.19 for Grad-CAM, 0.43 for
DeconvNet; the threshold is 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from ..core.figures import new_figure
from ..core.images import map_ssim
from ..core.model import configure, spec_of
from ..core.progress import Steps
from ..core.session import look, redone_when_weights_move
from ..core.shadow import named_modules, private_copy
from ..explain._common import boolean, clean_logits, objective_for
from ..explain.registry import METHODS, MethodInfo
from .metrics import Curve, deletion, importance, insertion, mask_overlap, pointing_game

MODES = ("cascading", "independent")
THRESHOLD = 0.5  # a check passes when the randomized maps' mean |Spearman| (absolute values) falls below this


@dataclass
class SanityCheck:
    """The randomization test of one method on one image or a batch (numbers are means over the images).

    ``layers`` is the randomization order, top layer first; ``spearman``, ``spearman_abs`` and ``ssim`` have one
    entry per layer in that order (cascading: the last entry has every layer randomized). ``per_image`` holds
    the same numbers as layers×B tensors; ``original`` the trained model's maps (H×W or B×H×W) and ``maps`` the
    randomized ones (layers×H×W or layers×B×H×W; None when not kept).
    """

    method: str
    mode: str
    layers: list[str]
    spearman: torch.Tensor
    spearman_abs: torch.Tensor
    ssim: torch.Tensor
    original: torch.Tensor
    maps: torch.Tensor | None
    per_image: dict[str, torch.Tensor]
    target: str
    threshold: float = THRESHOLD
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def score(self) -> float:
        """The number the verdict reads: the mean |Spearman| of the absolute maps over the entries (cascading:
        the area under the cascade's curve, so a map that stays put while the top layers are randomized scores
        high; independent: the mean over the layers, each randomized alone)."""
        return float(self.spearman_abs.abs().mean())

    @property
    def passes(self) -> bool:
        """Whether the maps changed when the weights were randomized (``score`` below ``threshold``): a method
        that fails shows much the same map for a model that learned nothing."""
        return self.score < self.threshold

    def figure(self, *, figure: Any = None):
        """Spearman (both kinds) and SSIM per randomized layer. Imports matplotlib lazily."""
        fig = new_figure(figure, figsize=(4.5, 2.6))
        self.plot(fig.add_subplot(1, 1, 1))
        fig.tight_layout()
        return fig

    def plot(self, ax: Any) -> None:
        """Draw the per-layer curves into a matplotlib Axes (x: layers as randomized, top first)."""
        steps = range(len(self.layers))
        # |·| dashed over a wider solid line: for a map with no negative part the two curves are the same, and
        # both must still show
        for values, label, style in ((self.spearman, "Spearman", dict(lw=2.4, marker="o", ms=4)),
                                     (self.spearman_abs, "Spearman |·|", dict(lw=1.2, ls="--", marker="o", ms=2.5)),
                                     (self.ssim, "SSIM", dict(lw=1.2, marker="s", ms=3))):
            ax.plot(steps, values.numpy(), label=label, **style)
        ax.axhline(self.threshold, color="gray", lw=0.8, ls="--", label=f"pass below {self.threshold:g}")
        ax.set_xticks(list(steps), self.layers, rotation=60, ha="right", fontsize=7)
        ax.set_xlabel("randomized down to this layer" if self.mode == "cascading" else "the one layer randomized",
                      fontsize=7)
        ax.set_ylim(-1.05, 1.05)
        ax.legend(fontsize=7)
        verdict = "passes" if self.passes else "fails"
        ax.set_title(f"{self.mode} randomization · {verdict} (mean |ρ| {self.score:.2f})", fontsize=8)


def _method(method: Any) -> MethodInfo:
    """A registry entry: a name in ``METHODS``, a MethodInfo, or any ``fn(model, x, target, **options)`` that
    returns an Explanation or B×H×W maps (e.g. your own method)."""
    if isinstance(method, MethodInfo):
        return method
    if isinstance(method, str) and method in METHODS:
        return METHODS[method]
    if callable(method) and not isinstance(method, str):
        name = getattr(method, "__name__", type(method).__name__)
        return MethodInfo(name, name, method, "a method given as a function")
    raise ValueError(f"method={method!r}: choose one of {', '.join(METHODS)}, or pass a function "
                     "fn(model, x, target, **options) returning an Explanation or maps.")


def _call(info: MethodInfo, model: torch.nn.Module, x: torch.Tensor, target: Any, options: dict[str, Any],
          seed: int, cancel: Any) -> torch.Tensor:
    """One map per image (B×H×W), the method called as its registry entry says."""
    kwargs = dict(options)
    if info.seeded:
        kwargs.setdefault("seed", seed)  # the same noise for the trained and the randomized model
    if info.long_running and cancel is not None:
        kwargs.setdefault("cancel", cancel)
    result = info.function(model, x, target, **kwargs)
    maps = torch.as_tensor(importance(result)).detach().cpu()
    return maps.reshape(len(x), *maps.shape[-2:]).float()


def _randomizable(net: torch.nn.Module, order: list[str]) -> list[str]:
    """Modules that own parameters, top first (reverse forward order)."""
    modules = named_modules(net)
    own = [name for name in order if name in modules and any(True for _ in modules[name].parameters(recurse=False))]
    return own[::-1]


def _chosen_layers(layers: Any, available: list[str]) -> list[str]:
    if layers is None:
        return available
    if isinstance(layers, str) or not all(isinstance(n, str) for n in layers):
        raise TypeError("layers must be a list of layer names (or None for every layer with parameters).")
    unknown = [n for n in layers if n not in available]
    if unknown or not layers:
        raise ValueError(f"layers: {', '.join(map(repr, unknown)) or 'an empty list'} — choose layers with "
                         f"parameters: {', '.join(available)}.")
    return [n for n in available if n in set(layers)]


@torch.no_grad()
def _randomize(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Re-initialise the parameters a module owns (see the module doc), drawing on the CPU from ``gen``."""
    params = dict(module.named_parameters(recurse=False))
    weight = params.get("weight")
    fan_in = weight[0].numel() if weight is not None and weight.dim() >= 2 else None
    for p in params.values():
        if fan_in is not None:
            bound = 1 / math.sqrt(fan_in)
            fresh = (torch.rand(p.shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound
        else:
            std = float(p.detach().double().std()) if p.numel() > 1 else 0.0
            fresh = float(p.detach().double().mean()) + std * torch.randn(p.shape, generator=gen, dtype=torch.float64)
        p.copy_(fresh.to(p))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho of two flattened maps. A constant map has no ranking: two equal constant maps count as
    identical (1), a constant map against a varying one as unrelated (0)."""
    flat_a, flat_b = np.ptp(a) == 0, np.ptp(b) == 0
    if flat_a or flat_b:
        return 1.0 if flat_a and flat_b and np.allclose(a, b) else 0.0
    return float(spearmanr(a, b).statistic)


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two maps, each as |map| divided by its maximum (Adebayo et al.'s normalization)."""
    a, b = np.abs(a), np.abs(b)
    a = a / a.max() if a.max() > 0 else a
    b = b / b.max() if b.max() > 0 else b
    return map_ssim(a, b, 1.0)


def _compare(original: torch.Tensor, randomized: torch.Tensor) -> tuple[list[float], list[float], list[float]]:
    rho, rho_abs, ssim = [], [], []
    for a, b in zip(original.double().numpy(), randomized.double().numpy()):
        rho.append(_spearman(a.ravel(), b.ravel()))
        rho_abs.append(_spearman(np.abs(a).ravel(), np.abs(b).ravel()))
        ssim.append(_ssim(a, b))
    return rho, rho_abs, ssim


@redone_when_weights_move
def sanity_check(model: torch.nn.Module, x: Any, method: Any = "saliency", target: Any = None, *,
                 mode: str = "cascading", layers: list[str] | None = None, seed: int = 0, threshold: float = THRESHOLD,
                 keep_maps: bool = True, progress=None, cancel=None, **method_options: Any) -> SanityCheck:
    """Adebayo et al.'s model-parameter randomization test of ``method`` on ``x``: a name in ``cl.METHODS``, or
    any ``fn(model, x, target, **options)`` returning an Explanation or B×H×W maps.

    ``mode="cascading"`` randomizes the layers with parameters from the top down, cumulatively;
    ``"independent"`` one at a time. ``layers`` restricts the check to some of them (names). The target is
    resolved on the trained model (None: its predicted class per image) and kept for the randomized ones.
    ``method_options`` go to the method (e.g. ``layer=`` for Grad-CAM); seeded methods get ``seed``.
    ``keep_maps=False`` drops the randomized maps (``.maps`` is None; they take layers × B × H × W floats).
    Deterministic for a ``seed``; the user's weights are never written.
    """
    info = _method(method)
    keep_maps = boolean(keep_maps, "keep_maps")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: choose one of {', '.join(MODES)}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}.")
    with look(model) as s:
        batch = s.prepare(x)
        xs = batch.x.detach()
        size = tuple(xs.shape[-2:])
        objective = objective_for(s, target, size)
        objective = objective.bind(clean_logits(s, xs, objective))
        order = [layer.name for layer in s.layers(size)]
        chosen = _chosen_layers(layers, _randomizable(s.net, order))
    copy = private_copy(model)
    configure(copy, **{k: v for k, v in vars(spec_of(model)).items() if v is not None})
    modules = named_modules(copy)
    steps = Steps(len(chosen) + 1, progress, cancel)
    steps.check()
    original = _call(info, model, xs, objective, method_options, seed, cancel)
    steps.advance()
    gen = torch.Generator().manual_seed(seed)
    trained = {name: [p.detach().clone() for p in modules[name].parameters(recurse=False)] for name in chosen
               if mode == "independent"}  # restored after each layer's turn
    stats: dict[str, list[list[float]]] = {"spearman": [], "spearman_abs": [], "ssim": []}
    maps = []
    for name in chosen:
        _randomize(modules[name], gen)
        randomized = _call(info, copy, xs, objective, method_options, seed, cancel)
        if mode == "independent":
            with torch.no_grad():
                for p, saved in zip(modules[name].parameters(recurse=False), trained[name]):
                    p.copy_(saved)
        if keep_maps:
            maps.append(randomized)
        for key, values in zip(stats, _compare(original, randomized)):
            stats[key].append(values)
        steps.advance()
    per_image = {key: torch.tensor(values, dtype=torch.float32) for key, values in stats.items()}
    stacked = torch.stack(maps) if keep_maps else None
    if batch.single:
        original = original[0]
        stacked = stacked[:, 0] if keep_maps else None
    return SanityCheck(info.name, mode, chosen, *(per_image[k].mean(1) for k in stats), original=original,
                       maps=stacked, per_image=per_image, target=objective.description, threshold=threshold,
                       params={"seed": seed, **method_options})


@dataclass
class ExplanationChecks:
    """Every check of one method's map on one image: the map, its randomization test, deletion and insertion
    curves, and — when a ground-truth mask was given — the pointing game and the mask overlap."""

    explanation: Any
    sanity: SanityCheck | None
    deletion: Curve
    insertion: Curve
    pointing: bool | None
    overlap: float | None

    def summary(self) -> dict[str, Any]:
        """The numbers as a flat dict (for a table)."""
        out: dict[str, Any] = {"deletion": float(self.deletion.auc), "insertion": float(self.insertion.auc),
                               "pointing": self.pointing, "overlap": self.overlap}
        if self.sanity is not None:
            out.update(sanity=self.sanity.passes, spearman=self.sanity.score)
        return out


@redone_when_weights_move
def check_explanation(model: torch.nn.Module, x: Any, method: Any = "saliency", target: Any = None, *,
                      mask: Any = None, sanity: bool = True, steps: int = 64, seed: int = 0, progress=None,
                      cancel=None, **method_options: Any) -> ExplanationChecks:
    """All checks of ``method``'s map for one image ``x``: the map, the cascading randomization test (when
    ``sanity``), deletion and insertion curves with ``steps`` steps, and the pointing game and mask overlap
    against ``mask`` (H×W) when given."""
    info = _method(method)
    sanity = boolean(sanity, "sanity")
    with look(model) as s:
        batch = s.prepare(x)
        if len(batch.x) != 1:
            raise ValueError(f"x: check_explanation takes one image, got a batch of {len(batch.x)}; "
                             "call sanity_check, deletion and insertion directly for batches.")
        xs = batch.x.detach()
        objective = objective_for(s, target, tuple(xs.shape[-2:]))
        objective = objective.bind(clean_logits(s, xs, objective))
    kwargs = dict(method_options)
    if info.seeded:
        kwargs.setdefault("seed", seed)
    if info.long_running:
        kwargs.setdefault("cancel", cancel)
    Steps(1, None, cancel).check()
    explanation = info.function(model, xs[0], objective, **kwargs)
    done = 1
    check = None
    if sanity:
        def report(d: int, t: int) -> None:  # the randomization maps, then the two curves
            if progress is not None:
                progress(1 + d, t + 3)

        check = sanity_check(model, xs[0], info, objective, seed=seed, progress=report, cancel=cancel,
                             **method_options)
        done += len(check.layers) + 1
    total = done + 2
    if progress is not None:
        progress(done, total)
    curves = []
    for curve in (deletion, insertion):
        curves.append(curve(model, xs[0], explanation, objective, steps=steps, cancel=cancel))
        done += 1
        if progress is not None:
            progress(done, total)
    hit = overlap = None
    if mask is not None:
        hit, overlap = pointing_game(explanation, mask), mask_overlap(explanation, mask)
    return ExplanationChecks(explanation, check, *curves, pointing=hit, overlap=overlap)
