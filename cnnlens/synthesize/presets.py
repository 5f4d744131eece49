"""The schools of activation maximization, as data.

Each :class:`Preset` reproduces one school's published settings; ``at(strength)``
moves it smoothly from unregularized (0) through the published settings (0.5)
to twice as regularized (1), which is the views' "regularization strength"
slider. Presets with no regularizer of their own (raw, keras) gain a
Yosinski-style blur and decay as strength grows.

- ``raw``: plain gradient ascent on the pixels (a fixed step, scaled once by
  the first gradient), no regularizer — the fooling images of Nguyen et al.;
- ``keras``: the Keras blog post (Chollet 2016): normalized gradient
  g / RMS(g), 20 steps of 1 (in 0–255 units), gray + noise start;
- ``yosinski1`` … ``yosinski4``: the four hyperparameter sets of Yosinski et
  al. (2015, Table 1); ``yosinski`` is their recommended set 3 (L2 decay
  1e-4, blur radius 1.0 every 4 steps), 1000 steps;
- ``lucid-published``: Olah et al. (2017) as Lucid ships it: Fourier
  parametrization with a 1/f spectrum and decorrelated colour, the standard
  transforms, Adam with lr 0.05, 512 steps;
- ``lucid`` (the default): the same recipe with a steeper spectrum (1/f^1.5)
  and transforms 1.5× Lucid's. Measured on the default model
  (bench/recognizability.py), class visualizations with Lucid's own numbers
  are textures of many small shape copies that a second, independently
  trained model calls one class for every target (12% intended); the steeper
  spectrum makes fewer, larger, cleaner shapes, which it recognizes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .regularizers import StepRules


@dataclass(frozen=True)
class Preset:
    """One school's settings; see the module doc."""

    name: str
    param: str  # "pixel" or "fourier"
    optimizer: str  # "sgd" (a fixed step: scaled once by the first gradient, or normalized by rules) or "adam"
    lr: float
    steps: int
    init: str = "noise"
    transforms: float = 0.0  # strength of Lucid's standard transforms (1 = Lucid's magnitudes)
    decay_power: float = 1.0  # Fourier spectrum 1/f^decay_power
    rules: StepRules = field(default_factory=StepRules)

    def at(self, strength: float | None) -> Preset:
        """The preset at regularization ``strength`` in [0, 1] (None or 0.5: the published settings)."""
        if strength is None:
            return self
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
            raise ValueError(f"strength must be a number in [0, 1] (0.5 = the preset's published settings), "
                             f"got {strength!r}.")
        k = 2.0 * strength
        rules = self.rules
        if not rules.changes_pixels and self.param == "pixel" and not self.transforms:
            rules = dataclasses.replace(rules, decay=1e-3 * strength, blur_sigma=2.0 * strength,
                                        blur_every=4 if strength else 0)
        else:
            rules = dataclasses.replace(rules, decay=min(rules.decay * k, 0.9), blur_sigma=rules.blur_sigma * k,
                                        norm_pct=min(rules.norm_pct * k, 95.0),
                                        contribution_pct=min(rules.contribution_pct * k, 95.0))
        return dataclasses.replace(self, transforms=self.transforms * k, decay_power=self.decay_power * k,
                                   rules=rules)


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("raw", "pixel", "sgd", lr=0.02, steps=200),
    Preset("keras", "pixel", "sgd", lr=1 / 255, steps=20, init="gray_noise",
           rules=StepRules(normalize=True)),
    Preset("yosinski1", "pixel", "sgd", lr=0.05, steps=1000, rules=StepRules(blur_sigma=0.5, blur_every=4,
                                                                              norm_pct=50)),
    Preset("yosinski2", "pixel", "sgd", lr=0.05, steps=1000, rules=StepRules(decay=0.3, norm_pct=20)),
    Preset("yosinski3", "pixel", "sgd", lr=0.05, steps=1000, rules=StepRules(decay=1e-4, blur_sigma=1.0,
                                                                              blur_every=4)),
    Preset("yosinski4", "pixel", "sgd", lr=0.05, steps=1000, rules=StepRules(blur_sigma=0.5, blur_every=4,
                                                                              contribution_pct=90)),
    Preset("lucid-published", "fourier", "adam", lr=0.05, steps=512, transforms=1.0),
    Preset("lucid", "fourier", "adam", lr=0.05, steps=512, transforms=1.5, decay_power=1.5),
)}
PRESETS["yosinski"] = dataclasses.replace(PRESETS["yosinski3"], name="yosinski")


def preset(name: str) -> Preset:
    """The preset called ``name``, or a ValueError listing them."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}. Valid presets: {', '.join(PRESETS)}.")
    return PRESETS[name]
