"""Regularizers: objectives on the image itself, and the operations some schools apply between steps.

The objectives read ``context.input`` (the image being optimized, before the
transforms) and return one value per image, so they combine with any target
in the one objective algebra: ``"stage4:3" - 0.05 * cl.total_variation()``.
Pixel values are measured from mid-gray (0.5), the [0, 1] counterpart of the
mean-subtracted images of the papers.

Between-step operations (:class:`StepRules`) follow Yosinski et al. (2015):
multiplicative L2 decay, a Gaussian blur every few steps, and clipping
pixels whose norm or whose contribution (|x · ∂f/∂x|) is below a
percentile; and the Keras post's normalized-gradient ascent (g / RMS(g)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.images import gaussian_blur
from ..core.objectives import Context, Objective


class _ImageObjective(Objective):
    needs_logits = False

    def _centred(self, ctx: Context) -> torch.Tensor:
        if ctx.input is None:
            raise ValueError(f"{self.description} reads the image, and this context has none.")
        return ctx.input - 0.5


class L2(_ImageObjective):
    """Mean squared distance of the pixels from gray."""

    description = "l2"

    def evaluate(self, ctx: Context) -> torch.Tensor:
        return self._centred(ctx).pow(2).flatten(1).mean(1)


class L1(_ImageObjective):
    """Mean absolute distance of the pixels from gray."""

    description = "l1"

    def evaluate(self, ctx: Context) -> torch.Tensor:
        return self._centred(ctx).abs().flatten(1).mean(1)


class AlphaNorm(_ImageObjective):
    """Mean of |x − 0.5|^α (Mahendran & Vedaldi's α-norm, α = 6 by default), per pixel of the [0, 1] range."""

    def __init__(self, alpha: float = 6.0):
        self.alpha = float(alpha)
        self.description = f"alpha_norm({self.alpha:g})"

    def evaluate(self, ctx: Context) -> torch.Tensor:
        return self._centred(ctx).abs().pow(self.alpha).flatten(1).mean(1)


class TotalVariation(_ImageObjective):
    """Mean over pixels of ((∂x/∂u)² + (∂x/∂v)²)^(β/2) (Mahendran & Vedaldi's TV^β; β = 1 is the classic TV)."""

    def __init__(self, beta: float = 2.0):
        self.beta = float(beta)
        self.description = f"total_variation({self.beta:g})"

    def evaluate(self, ctx: Context) -> torch.Tensor:
        x = self._centred(ctx)
        dy = x[..., 1:, :-1] - x[..., :-1, :-1]
        dx = x[..., :-1, 1:] - x[..., :-1, :-1]
        squared = (dy**2 + dx**2).sum(1)
        return (squared + 1e-12).pow(self.beta / 2).flatten(1).mean(1)


def l2() -> Objective:
    """Mean squared distance of the image from gray (subtract it, scaled, from a target)."""
    return L2()


def l1() -> Objective:
    """Mean absolute distance of the image from gray."""
    return L1()


def alpha_norm(alpha: float = 6.0) -> Objective:
    """Mean |x − 0.5|^α of the image."""
    return AlphaNorm(alpha)


def total_variation(beta: float = 2.0) -> Objective:
    """Total variation TV^β of the image."""
    return TotalVariation(beta)


@dataclass(frozen=True)
class StepRules:
    """What happens around each optimizer step (all off by default).

    ``normalize``: ascend along g / RMS(g) (Keras post); ``decay``: x ← 0.5 + (1 − decay)(x − 0.5) after
    each step; ``blur_sigma`` / ``blur_every``: Gaussian blur every few steps; ``norm_pct``: pixels whose
    norm (over channels, from gray) is below this percentile are set to gray; ``contribution_pct``: the
    same for |Σ_c (x − 0.5) · ∂f/∂x| (Yosinski et al. 2015).
    """

    normalize: bool = False
    decay: float = 0.0
    blur_sigma: float = 0.0
    blur_every: int = 0
    norm_pct: float = 0.0
    contribution_pct: float = 0.0

    def gradient(self, grad: torch.Tensor) -> torch.Tensor:
        if not self.normalize:
            return grad
        rms = grad.pow(2).flatten(1).mean(1).sqrt().clamp(min=1e-8)
        return grad / rms.view(-1, *([1] * (grad.dim() - 1)))

    @torch.no_grad()
    def after_step(self, image: torch.Tensor, grad: torch.Tensor | None, step: int) -> None:
        """Apply the pixel-space rules to ``image`` (a pixel parametrization's tensor) in place."""
        if self.decay:
            image.sub_(0.5).mul_(1 - self.decay).add_(0.5)
        if self.blur_sigma > 0 and self.blur_every and (step + 1) % self.blur_every == 0:
            image.copy_(gaussian_blur(image, self.blur_sigma))
        if self.norm_pct > 0:
            _clip_below(image, (image - 0.5).norm(dim=1), self.norm_pct)
        if self.contribution_pct > 0 and grad is not None:
            _clip_below(image, ((image - 0.5) * grad).sum(1).abs(), self.contribution_pct)

    @property
    def changes_pixels(self) -> bool:
        return bool(self.decay or (self.blur_sigma and self.blur_every) or self.norm_pct or self.contribution_pct)


def _clip_below(image: torch.Tensor, score: torch.Tensor, percentile: float) -> None:
    """Set the pixels whose ``score`` (B×H×W) is below the per-image ``percentile`` to gray."""
    threshold = torch.quantile(score.flatten(1), percentile / 100, dim=1).view(-1, 1, 1)
    image.masked_fill_((score < threshold)[:, None].expand_as(image), 0.5)
