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

from .conftest import random_model

InputRangeWarning = cl.InputRangeWarning  # public: users filter it by this name


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


def test_figures_are_pictures_in_a_notebook_and_show_displays_once(tmp_path):
    """A cell ending with ``.figure()`` shows a PNG (a bare matplotlib Figure needs a formatter that only
    ``%matplotlib inline`` or pyplot would register: it printed ``<Figure size …>``); ``.show()`` shows one."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in (
        "import cnnlens as cl\nmodel, data = cl.zoo.shapes()\ne = cl.gradcam(model, data.images[0])\ne.figure()",
        "e.show(data.images[0])",
        "cl.visualize(model, 'star', steps=2).figure()",
    )])
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
                   ).execute()
    for cell in notebook.cells:
        pictures = [o for o in cell.outputs if "image/png" in o.get("data", {})]
        assert len(pictures) == 1, cell.outputs


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_a_model_in_another_dtype_gets_synthesis_dreams_and_lime(dtype):
    """Feature visualization fed its float32 image to a float64 or bfloat16 model (a dtype error); DeepDream's
    antialiased resize and LIME's NumPy fit had no bfloat16 path. The network now receives its own dtype."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3),
                                torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(8, 5)).eval().to(dtype)
    cl.configure(model, input_size=32)
    x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    synthesis = cl.visualize(model, cl.channel("2", 1), steps=4, seed=0)
    assert synthesis.images.dtype == torch.float32 and torch.isfinite(synthesis.images).all()
    assert synthesis.history[-1, 0].item() > synthesis.history[0, 0].item()  # the gradient reached the image
    dream = cl.deepdream(model, x, "2", steps=2, octaves=2)
    assert torch.isfinite(dream.images.float()).all()
    assert torch.isfinite(cl.lime(model, x, 1, samples=16, seed=0).map).all()


def test_a_single_score_model_is_a_binary_head_whose_probability_is_its_sigmoid():
    """A softmax over one score is always 1: occlusion and LIME drew constant maps. One score is the logit of a
    binary head, and its class's probability is the sigmoid."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 1)).eval()
    x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    occluded = cl.occlusion(model, x, mask_size=8, stride=8, incremental=False)
    y, x0 = 8, 16
    hidden = x.clone()
    hidden[:, y:y + 8, x0:x0 + 8] = 0.5
    with torch.no_grad():
        expected = torch.sigmoid(model(hidden[None]).double())[0, 0]
    assert occluded.raw[y // 8, x0 // 8].item() == pytest.approx(expected.item(), rel=1e-6)
    assert occluded.raw.max() > occluded.raw.min()
    assert cl.lime(model, x, samples=64, seed=0).map.abs().max() > 0
    with torch.no_grad():
        score = model(x[None])[0, 0]
    (top,) = cl.gradcam(model, x).predictions
    assert top.prob == pytest.approx(torch.sigmoid(score).item(), rel=1e-5)
