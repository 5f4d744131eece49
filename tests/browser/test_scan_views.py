"""The scan views in real JupyterLab + Chromium, standalone: top images of a unit (Zeiler & Fergus Fig. 2) and
each class's extremes render real images, every control changes the pixels, a click sets the shared image
picker, captions show the scores, and errors show inside the widget."""

from __future__ import annotations

import re

from .conftest import Notebook
from .test_lens_in_jupyterlab import CANVAS, choose, redrawn, set_slider, visible_panels
from .test_synthesis_views import SPREAD

SETUP = """import ipywidgets as W
import torch
import cnnlens as cl
from cnnlens.widgets import ClassImagesView, SharedScan, TopImagesView

model, data = cl.zoo.shapes()
index = W.IntSlider(value=0, min=0, max=len(data) - 1, description='image')
shared = SharedScan(model, data)
top = TopImagesView(model, data, index, scan=shared, layer='stage3', unit=5)
display(index, top)"""
CLASSES = """classes = ClassImagesView(model, data, index, scan=shared, cls='hexagon')
classes"""
READOUT = """v => [...document.querySelectorAll('.widget-slider')].some(s => s.offsetParent
    && s.querySelector('label')?.textContent === 'image'
    && s.querySelector('.widget-readout')?.textContent.trim() === v)"""
SETTLED = """n => { const ps = [...document.querySelectorAll('.cnnlens-panel')].filter(p => p.offsetParent);
    return ps.length >= n && ps.every(p => +(p.dataset.renderCount || 0) >= 1 && p.dataset.status === 'idle'); }"""


def click_tile(panel, row: int, col: int, rows: int, cols: int) -> None:
    canvas = panel.locator("canvas.cl-canvas")
    box = canvas.bounding_box()
    canvas.click(position={"x": box["width"] * (col + 0.5) / cols, "y": box["height"] * (row + 0.5) / rows})


def picked(page, notebook: Notebook, expression: str, marker: str) -> int:
    """The image index the kernel holds after a click, checked against ``expression`` (the clicked hit's index)
    and waited for in the picker's readout (the front end's echo of the kernel's value can lag the redraw)."""
    values = notebook.run_code(f"print('{marker}', index.value, {expression})", marker).split()[1:]
    assert values[0] == values[1], values
    page.wait_for_function(READOUT, arg=values[0], timeout=30_000)
    return int(values[0])


def test_scan_views_render_answer_every_control_and_pick_images(open_notebook):
    notebook: Notebook = open_notebook("scan_views.ipynb", [SETUP, CLASSES])
    page = notebook.page
    page.wait_for_function(SETTLED, arg=5, timeout=180_000)
    panels = visible_panels(page)
    assert panels.count() == 5  # projections and patches; highest, lowest and confidently wrong
    projections, patches, highest, lowest, wrong = (panels.nth(i) for i in range(5))
    for i in range(5):
        assert panels.nth(i).evaluate(SPREAD) > 4, i  # real images: not blank, not flat
    assert projections.locator(".cl-title").text_content().startswith("stage3:5 · DeconvNet projections")
    assert "of 500 images" in patches.locator(".cl-title").text_content()
    # the captions are the class probabilities (and label → prediction for the wrong ones), as text
    captions = highest.locator(".cl-caption").all_text_contents()
    assert len(captions) == 9 and all(re.fullmatch(r"(\w+ )?0\.\d\d", c) for c in captions), captions
    assert re.fullmatch(r"\w+ → hexagon 0\.\d\d", wrong.locator(".cl-caption").first.text_content())
    assert highest.locator(".cl-captions *").count() == 9  # one text span per tile, nothing else
    out = page.locator(".jp-OutputArea-output:has(.cnnlens-panel)")
    notebook.screenshot("scan_top_images", out.first)
    notebook.screenshot("scan_class_images", out.nth(1))

    # every control changes the pixels
    redrawn(page, patches, lambda: set_slider(page, "unit", 7))
    assert projections.locator(".cl-title").text_content().startswith("stage3:7")
    redrawn(page, patches, lambda: choose(page, "layer", "stage4"))
    assert projections.locator(".cl-title").text_content().startswith("stage4:7")
    redrawn(page, patches, lambda: page.locator(".widget-toggle-buttons:visible button", has_text="bottom 9").click())
    assert "lowest activations" in projections.locator(".cl-title").text_content()
    redrawn(page, patches, lambda: page.locator(".widget-toggle-buttons:visible button", has_text="top 9").click())
    redrawn(page, highest, lambda: choose(page, "class", "star"))
    assert "'star'" in highest.locator(".cl-title").text_content()
    page.wait_for_function(SETTLED, arg=4, timeout=60_000)

    # a click on a patch makes its image the current one (and outlines it), a click on a class image too
    redrawn(page, patches, lambda: click_tile(patches, 1, 2, 3, 3))
    first = picked(page, notebook, "top.hits[5].index", "IDX")
    redrawn(page, lowest, lambda: click_tile(lowest, 0, 3, 1, 9))
    second = picked(page, notebook, "classes.lists['bottom'][3].index", "IDX2")
    assert first != 0 or second != 0  # the clicks moved the picker off its starting image
    notebook.screenshot("scan_views_clicked", page.locator(".jp-Notebook"))


def test_scan_errors_show_inside_the_views(open_notebook):
    notebook: Notebook = open_notebook("scan_errors.ipynb", [SETUP])
    page = notebook.page
    page.wait_for_function(SETTLED, arg=2, timeout=180_000)
    patches = visible_panels(page).nth(1)
    good = patches.evaluate(CANVAS)
    # the model changed since the scan: the view says what failed, the last good images stay
    notebook.run_code("model.stage3 = torch.nn.Conv2d(32, 4, 1)\ntop.unit.value = 40\nprint('changed')", "changed")
    page.wait_for_function("el => el.dataset.status === 'error'", arg=patches.element_handle(), timeout=60_000)
    assert "stage3:40 no longer exists" in patches.locator(".cl-error").text_content()
    assert patches.evaluate(CANVAS) == good
    notebook.screenshot("scan_views_error", page.locator(".jp-OutputArea-output:has(.cnnlens-panel)").first)
    # a scan that fails (an item that is not an image) shows its cause in every view waiting for it
    notebook.run_code("bad = [data[i] for i in range(20)] + ['not an image']\n"
                      "broken = ClassImagesView(cl.zoo.shapes_model(), bad)\nbroken", "class")
    page.wait_for_function("() => [...document.querySelectorAll('.cnnlens-panel')].filter(p => p.offsetParent)"
                           ".slice(2).some(p => p.dataset.status === 'error')", timeout=60_000)
    failed = visible_panels(page).nth(2)
    assert "The dataset scan failed" in failed.locator(".cl-error").text_content()
    assert failed.locator("canvas.cl-canvas").is_hidden()  # never had a picture: no empty frame above the error
    notebook.screenshot("scan_views_scan_failed", page.locator(".jp-OutputArea-output:has(.cnnlens-panel)").last)
