"""The embedding view standalone in real JupyterLab + Chromium: the scatter renders in the class colours,
hovering shows a thumbnail and its label, clicking makes the point's image the current one, the layer slider,
the method and the colour toggle change the pixels, and errors show in the widget."""

from __future__ import annotations

import re

import pytest

from cnnlens.zoo import CLASSES

from .conftest import Notebook, run_notebook
from .test_lens_in_jupyterlab import CANVAS, choose, pixels_changed

TIMEOUT = 120_000
# A model that predicts "circle" too often (its bias raised), so colouring by prediction differs visibly.
SETUP = """\
import copy, torch
import cnnlens as cl
model, data = cl.zoo.shapes(400)
biased = copy.deepcopy(model)
with torch.no_grad():
    biased.fc.bias[0] += 4.0
view = cl.widgets.EmbeddingView(biased, data, max_images=400)
view
"""
# distinct colours of the drawn points (white background, grey and the black ring left out), by canvas pixel count
COLOURS = """el => { const c = el.querySelector('canvas.cl-canvas');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    const seen = new Map();
    for (let i = 0; i < d.length; i += 4) {
        const [r, g, b] = [d[i], d[i + 1], d[i + 2]];
        if (Math.max(r, g, b) - Math.min(r, g, b) < 30) continue;
        const key = `${r},${g},${b}`; seen.set(key, (seen.get(key) || 0) + 1); }
    return [...seen.values()].filter(n => n >= 20).length; }"""
# CSS offsets (within the canvas) of a pixel drawn in a point's colour: where to hover and click
A_POINT = """el => { const c = el.querySelector('canvas.cl-canvas');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, r = c.width / c.clientWidth;
    for (let y = 2; y < c.height - 2; y += 2) for (let x = 2; x < c.width - 2; x += 2) {
        const i = (y * c.width + x) * 4;
        if (Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]) > 60) return [x / r, y / r]; }
    return null; }"""
TIP_SPREAD = """el => { const c = el.querySelector('canvas.cl-tip-image');
    if (!c || c.closest('[hidden]')) return -1;
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let s = 0, s2 = 0, n = 0;
    for (let i = 0; i < d.length; i += 4) { const v = (d[i] + d[i + 1] + d[i + 2]) / 3; s += v; s2 += v * v; n++; }
    const m = s / n; return Math.sqrt(Math.max(s2 / n - m * m, 0)); }"""


@pytest.fixture(scope="module")
def embedding(lab, browser):
    notebook = run_notebook(lab, browser, "embedding.ipynb", [SETUP], width=1300, height=1000)
    yield notebook
    notebook.page.close()


def scatter(page):
    return page.locator(".cnnlens-panel[data-kind='scatter']").first


def settled(page, panel) -> None:
    """Wait for a final layout: drawn, not running, the title no longer converging."""
    page.wait_for_function("""el => +(el.dataset.renderCount || 0) >= 1 && el.dataset.status !== 'running'
        && !el.querySelector('.cl-title').textContent.includes('converging')""",
                           arg=panel.element_handle(), timeout=TIMEOUT)


def changed(page, panel, act) -> None:
    before = panel.evaluate(CANVAS)
    act()
    pixels_changed(page, panel, before, TIMEOUT)
    settled(page, panel)
    assert panel.evaluate(CANVAS) != before


def readout(page, label: str) -> str:
    return page.locator(f".widget-slider:visible:has(label:text-is('{label}')) .widget-readout").first.text_content()


def test_scatter_hover_click_and_controls(embedding: Notebook):
    page = embedding.page
    panel = scatter(page)
    settled(page, panel)
    title = panel.locator(".cl-title").text_content()
    assert title.startswith("stage4 · t-SNE of 400 images · 10-NN accuracy "), title
    assert float(re.search(r"accuracy ([\d.]+)%", title).group(1)) >= 90  # classes form clusters at the last stage
    assert panel.evaluate(COLOURS) >= 7  # eight classes in tab10 colours (the eighth, grey, is not counted)
    legend = panel.locator(".cl-legend-item").all_text_contents()
    assert legend == list(CLASSES), legend
    embedding.screenshot("embedding_stage4", panel)

    x, y = panel.evaluate(A_POINT)
    canvas = panel.locator("canvas.cl-canvas")
    canvas.hover(position={"x": x, "y": y})
    page.wait_for_function("el => +el.dataset.hovered >= 0", arg=panel.element_handle(), timeout=10_000)
    hover = panel.locator(".cl-hover").text_content()
    assert re.fullmatch(r"image \d+ · label \w+ · predicted \w+", hover), hover
    assert panel.evaluate(TIP_SPREAD) > 10  # a thumbnail, not a blank square
    assert panel.locator(".cl-tip-text").text_content() == hover
    embedding.screenshot("embedding_hover", panel)
    image = hover.split(" ")[1]

    before = panel.evaluate(CANVAS)
    canvas.click(position={"x": x, "y": y})  # the point's image becomes the current one; its point is ringed
    page.wait_for_function("i => [...document.querySelectorAll('.widget-readout')].some(r => r.textContent === i)",
                           arg=image, timeout=10_000)
    assert readout(page, "image") == image
    pixels_changed(page, panel, before, 10_000)

    changed(page, panel, lambda: page.locator(".widget-toggle-button", has_text="prediction").click())
    assert panel.evaluate(COLOURS) >= 2
    embedding.screenshot("embedding_by_prediction", panel)

    handle = page.locator(".widget-slider:visible:has(label:text-is('layer')) .noUi-handle").first
    handle.focus()
    changed(page, panel, lambda: [page.keyboard.press("ArrowLeft") for _ in range(3)])
    page.wait_for_function("el => el.querySelector('.cl-title').textContent.startsWith('stage1 ')",
                           arg=panel.element_handle(), timeout=TIMEOUT)
    settled(page, panel)
    assert readout(page, "layer") == "stage1"
    embedding.screenshot("embedding_stage1", panel)

    changed(page, panel, lambda: choose(page, "method", "PCA"))
    assert panel.locator(".cl-title").text_content().startswith("stage1 · PCA of 400 images")


def test_errors_show_in_the_widget(open_notebook):
    notebook = open_notebook("embedding_error.ipynb", [
        "import cnnlens as cl\nmodel, data = cl.zoo.shapes(50)\n"
        "cl.widgets.EmbeddingView(model, data, max_images=2)"])
    page = notebook.page
    panel = scatter(page)
    page.wait_for_function("el => el.dataset.status === 'error'", arg=panel.element_handle(), timeout=TIMEOUT)
    assert "at least 3" in panel.locator(".cl-error").text_content()
