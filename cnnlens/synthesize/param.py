"""Image parametrizations: what the optimizer changes, and how it becomes an image in [0, 1].

- :class:`PixelImage`: the pixels themselves, kept in [0, 1] after every step.
- :class:`FourierImage`: a Fourier basis whose coefficients are scaled by
  1/frequency^p (p = 1: every frequency starts with equal energy in the
  image, Lucid's 1/f spectrum; a larger p damps fine detail), with decorrelated colour (Lucid's ImageNet colour
  correlation square root) and a sigmoid to [0, 1] (Olah et al. 2017).

Both take their random start from a private generator.
"""

from __future__ import annotations

import torch

# the square root of ImageNet's colour correlation (Lucid): decorrelated channels → RGB
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOR = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()


class PixelImage:
    """Pixels in [0, 1]: ``init`` is ``"noise"`` (gray + small noise), ``"uniform"`` (U[0, 1] noise, as Erhan
    et al. start), ``"gray"``, ``"gray_noise"`` (the Keras post's gray + uniform noise of 20/255) or a
    B×C×H×W tensor."""

    def __init__(self, shape: tuple[int, int, int, int], gen: torch.Generator, device: torch.device,
                 init: str | torch.Tensor = "noise"):
        if isinstance(init, torch.Tensor):
            start = init.detach().to(device=device, dtype=torch.float32).expand(shape).clone()
        elif init == "gray":
            start = torch.full(shape, 0.5)
        elif init == "gray_noise":
            start = 0.5 + torch.rand(shape, generator=gen) * (20 / 255) - 10 / 255
        elif init == "noise":
            start = 0.5 + 0.05 * torch.randn(shape, generator=gen)
        elif init == "uniform":
            start = torch.rand(shape, generator=gen)
        else:
            raise ValueError(f"Unknown init {init!r}. Valid: noise, uniform, gray, gray_noise or a tensor.")
        self.tensor = start.to(device).clamp(0, 1).requires_grad_(True)

    def parameters(self) -> list[torch.Tensor]:
        return [self.tensor]

    def __call__(self) -> torch.Tensor:
        return self.tensor

    @torch.no_grad()
    def constrain(self) -> None:
        """Keep the pixels a valid image after a step."""
        self.tensor.clamp_(0, 1)


class FourierImage:
    """A Fourier-parametrized image with a 1/f^``decay_power`` spectrum and decorrelated colour."""

    def __init__(self, shape: tuple[int, int, int, int], gen: torch.Generator, device: torch.device,
                 decay_power: float = 1.0, decorrelate: bool = True, sd: float = 0.01):
        b, c, h, w = shape
        self.shape = shape
        fy = torch.fft.fftfreq(h)[:, None]
        fx = torch.fft.rfftfreq(w)[None, :]
        freqs = (fy**2 + fx**2).sqrt()
        # 1/f^p relative to the lowest frequency's gain at p = 1: a steeper spectrum damps fine detail
        # rather than amplifying the coarse structure (which would saturate the sigmoid)
        lowest = 1.0 / max(h, w)
        self.scale = ((lowest / freqs.clamp(min=lowest)) ** decay_power / lowest).to(device)
        spectrum = torch.randn((b, c, h, w // 2 + 1, 2), generator=gen) * sd
        self.spectrum = spectrum.to(device).requires_grad_(True)
        self.color = _COLOR.to(device) if decorrelate and c == 3 else None

    def parameters(self) -> list[torch.Tensor]:
        return [self.spectrum]

    def __call__(self) -> torch.Tensor:
        b, c, h, w = self.shape
        coefficients = torch.view_as_complex(self.spectrum) * self.scale
        image = torch.fft.irfft2(coefficients, s=(h, w), norm="ortho") / 4.0
        if self.color is not None:
            image = torch.einsum("bchw,dc->bdhw", image, self.color)
        return torch.sigmoid(image)

    def constrain(self) -> None:
        """Nothing to do: the sigmoid keeps the image in [0, 1]."""
