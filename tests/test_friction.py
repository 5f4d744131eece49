"""Friction a new user meets (issue 6, part 6): input ranges, model errors, figures in scripts."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import PIL.Image
import pytest
import torch

import cnnlens as cl
from cnnlens.core.session import InputRangeWarning

from .conftest import random_model


def test_an_already_normalized_or_0_255_image_gets_a_warning_that_says_what_is_expected():
    model = random_model("resnet18")
    x = torch.rand(3, 64, 64)
    with pytest.warns(InputRangeWarning, match=r"negative values.*\[0, 1\]"):
        cl.saliency(model, (x - 0.45) / 0.22, 0)
    with pytest.warns(InputRangeWarning, match="Divide a float image in 0–255 by 255"):
        cl.saliency(model, x * 255, 0)
    configured = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    cl.configure(configured, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    with pytest.warns(InputRangeWarning, match="normalized twice"):
        cl.saliency(configured, (x - 0.5) / 0.2, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cl.saliency(model, x, 0)
        cl.saliency(model, (x * 255).to(torch.uint8), 0)


def test_figure_takes_numpy_and_pil_images():
    model, data = cl.zoo.shapes()
    e = cl.gradcam(model, data.images[0])
    array = (data.images[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    for image in (array, PIL.Image.fromarray(array), data.images[0]):
        fig = e.figure(image)
        assert len(fig.axes) == 1 and len(fig.axes[0].images) == 2
    with pytest.raises(ValueError, match="image"):
        e.figure(torch.rand(2, 3, 64, 64))


def test_show_displays_in_a_plain_script():
    script = ("import cnnlens as cl, matplotlib.pyplot as plt\n"
              "model, data = cl.zoo.shapes()\n"
              "cl.gradcam(model, data.images[0]).show(data.images[0])\n"
              "print('figures', plt.get_fignums())\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={"MPLBACKEND": "Agg", "PATH": ""})
    assert out.returncode == 0, out.stderr
    assert "figures [1]" in out.stdout
