"""The synthesis tabs of the Lens in real JupyterLab + Chromium: they render live images, every control changes
the pixels, Stop stops and keeps the image, save PNG downloads it, units are linked, errors show."""

from __future__ import annotations

import io

import pytest

from .conftest import Notebook, run_notebook
from .test_lens_in_jupyterlab import (
    CANVAS,
    choose,
    open_tab,
    pixels_changed,
    render_count,
    set_slider,
    visible_panels,
    wait_title,
)

SYNTH_TIMEOUT = 180_000  # ms: a default job on a loaded 2-core machine
# the pixel spread of a panel's canvas: a blank or flat image has none
SPREAD = """el => { const c = el.querySelector('canvas.cl-canvas');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let s = 0, s2 = 0, n = 0;
    for (let i = 0; i < d.length; i += 4) { const v = (d[i] + d[i + 1] + d[i + 2]) / 3; s += v; s2 += v * v; n++; }
    const m = s / n; return Math.sqrt(Math.max(s2 / n - m * m, 0)); }"""
SETTLED = """() => { const ps = [...document.querySelectorAll('.cnnlens-panel')].filter(p => p.offsetParent);
    return ps.length > 0 && ps.every(p => +(p.dataset.renderCount || 0) >= 1 && p.dataset.status !== 'running'
        && !/(?<!stopped at )step \\d+\\//.test(p.querySelector('.cl-title').textContent)); }"""


@pytest.fixture(scope="module")
def lens(lab, browser):
    notebook = run_notebook(lab, browser, "synthesis.ipynb", ["import cnnlens as cl\nlens = cl.demo()\nlens"],
                            height=1200, accept_downloads=True)
    yield notebook
    notebook.page.close()


def settled(page, timeout: float = SYNTH_TIMEOUT) -> None:
    """Wait until every visible panel shows a final (or stopped) result: no title says "step k/N" unless stopped."""
    page.wait_for_function(SETTLED, timeout=timeout)


def changed(page, panel, act, timeout: float = SYNTH_TIMEOUT) -> None:
    """Run ``act`` and wait until ``panel`` settles on pixels other than before."""
    before = panel.evaluate(CANVAS)
    act()
    pixels_changed(page, panel, before, timeout)
    settled(page, timeout)
    assert panel.evaluate(CANVAS) != before


def canvas_size(panel) -> list[int]:
    return panel.evaluate("el => { const c = el.querySelector('canvas.cl-canvas'); return [c.width, c.height]; }")


def test_every_synthesis_tab_renders_live_images(lens: Notebook):
    page = lens.page
    for tab, count in (("Features", 2), ("Classes", 2), ("Deep Dream", 2), ("Inversion", 3)):
        open_tab(page, tab)  # opening the tab starts its job (the default settings)
        settled(page)
        panels = visible_panels(page)
        assert panels.count() == count, tab
        main = panels.nth(1) if tab in ("Deep Dream", "Inversion") else panels.first
        assert render_count(main) >= 2, tab  # streamed: partial images, then the final one
        for i in range(count):
            if panels.nth(i).get_attribute("data-kind") != "bars":
                assert panels.nth(i).evaluate(SPREAD) > 4, (tab, i)  # not blank, not flat
        lens.screenshot(f"synthesis_{tab.lower().replace(' ', '_')}", page.locator(".widget-tab:visible").first)
    open_tab(page, "Features")
    title = visible_panels(page).first.locator(".cl-title").text_content()
    assert title.startswith("stage4:0 · lucid · 512 steps · objective "), title
    open_tab(page, "Classes")
    titles = visible_panels(page).locator(".cl-title").all_text_contents()
    assert titles[0].startswith("circle · raw · P(circle) = ") and titles[1].startswith("circle · lucid · P(circle)")


def test_features_controls_stream_stop_and_save(lens: Notebook):
    from PIL import Image

    page = lens.page
    open_tab(page, "Features")
    settled(page)
    image, row = visible_panels(page).first, visible_panels(page).nth(1)
    set_slider(page, "steps", 64)  # quicker from here on
    wait_title(page, image, "64 steps", SYNTH_TIMEOUT)
    settled(page)
    changed(page, image, lambda: set_slider(page, "unit", 3))
    assert image.locator(".cl-title").text_content().startswith("stage4:3 · lucid · 64 steps")
    changed(page, image, lambda: choose(page, "preset", "raw"))
    changed(page, image, lambda: set_slider(page, "regularization", 1.0))
    changed(page, image, lambda: set_slider(page, "size", 96))
    assert canvas_size(image) == [96, 96]
    changed(page, image, lambda: set_slider(page, "starts", 2))
    assert canvas_size(image) == [2 * 96 + 2, 96]
    changed(page, image, lambda: set_slider(page, "diversity", 50))
    contrast = page.locator(".widget-checkbox:visible:has-text('stretch contrast') input")
    for _ in range(2):  # a display option: drawn again from the same result
        changed(page, image, lambda: contrast.click())
    changed(page, row, lambda: set_slider(page, "neighbours", 1))
    assert canvas_size(row)[0] == 3 * (96 + 1)  # three tiles, each with its 1 px gap
    # a click on the first neighbour (units 2, 3, 4) opens it; hovering names it
    box = row.locator("canvas.cl-canvas").bounding_box()
    row.locator("canvas.cl-canvas").hover(position={"x": box["width"] / 6, "y": 10})
    assert row.locator(".cl-hover").text_content() == "unit 2"
    changed(page, image, lambda: row.locator("canvas.cl-canvas").click(position={"x": box["width"] / 6, "y": 10}))
    assert image.locator(".cl-title").text_content().startswith("stage4:2 · raw")
    lens.screenshot("synthesis_features_controls", page.locator(".widget-tab:visible").first)
    # a long job streams its image and Stop keeps the last one
    before = render_count(image)
    set_slider(page, "steps", 2000)
    page.wait_for_function("([el, n]) => el.dataset.status === 'running' && +el.dataset.renderCount >= n + 2",
                           arg=[image.element_handle(), before], timeout=SYNTH_TIMEOUT)
    assert "· step " in image.locator(".cl-title").text_content()
    image.locator(".cl-stop").click()
    page.wait_for_function("el => el.dataset.status === 'idle'", arg=image.element_handle(), timeout=10_000)
    wait_title(page, image, "stopped at step ", 10_000)
    # save PNG: the browser downloads the image shown
    with page.expect_download() as download:
        page.locator(".widget-button:visible", has_text="save PNG").click()
    assert download.value.suggested_filename == "stage4_2_raw.png"
    saved = Image.open(io.BytesIO(open(download.value.path(), "rb").read()))
    assert saved.format == "PNG" and saved.size == (2 * 96 + 2, 96)
    lens.screenshot("synthesis_features_stopped", page.locator(".widget-tab:visible").first)
    set_slider(page, "steps", 64)
    wait_title(page, image, "64 steps", SYNTH_TIMEOUT)


def test_classes_and_the_fooling_comparison(lens: Notebook):
    page = lens.page
    open_tab(page, "Classes")
    settled(page)
    raw, regular = visible_panels(page).first, visible_panels(page).nth(1)
    changed(page, regular, lambda: choose(page, "class", "star"))
    assert raw.locator(".cl-title").text_content().startswith("star · raw · P(star) = ")
    assert regular.locator(".cl-title").text_content().startswith("star · lucid · P(star) = ")
    changed(page, regular, lambda: choose(page, "beside raw", "keras"))
    changed(page, regular, lambda: set_slider(page, "regularization", 0.9))
    assert regular.locator(".cl-title").text_content().startswith("star · keras · P(star) = ")
    lens.screenshot("synthesis_classes_star", page.locator(".widget-tab:visible").first)


def test_dream_and_inversion_controls(lens: Notebook):
    page = lens.page
    open_tab(page, "Deep Dream")
    settled(page)
    dream = visible_panels(page).nth(1)
    changed(page, dream, lambda: set_slider(page, "step size", 4))
    changed(page, dream, lambda: choose(page, "layer", "stage2"))
    changed(page, dream, lambda: set_slider(page, "unit", 3))
    assert dream.locator(".cl-title").text_content().startswith("dream of stage2:3 · ")
    for label, value in (("octaves", 2), ("octave scale", 1.8), ("steps", 20)):
        changed(page, dream, lambda label=label, value=value: set_slider(page, label, value))
    changed(page, dream, lambda: set_slider(page, "image", 5))  # the dream follows the image picker
    lens.screenshot("synthesis_dream_controls", page.locator(".widget-tab:visible").first)
    open_tab(page, "Inversion")
    settled(page)
    panel = visible_panels(page).nth(1)
    layers = page.locator(".widget-select-multiple:visible:has(label:text-is('layers')) select")
    changed(page, panel, lambda: layers.select_option(label=["stage1", "stage3"]))
    assert canvas_size(panel) == [2 * 64 + 2, 64]
    assert visible_panels(page).nth(2).locator(".cl-bar-row").count() == 2
    changed(page, panel, lambda: set_slider(page, "steps", 60))
    lens.screenshot("synthesis_inversion_controls", page.locator(".widget-tab:visible").first)
    # an error shows inside the panel, the last image stays
    layers.select_option([])
    page.wait_for_function("el => el.dataset.status === 'error'", arg=panel.element_handle(), timeout=30_000)
    assert "at least one layer" in panel.locator(".cl-error").text_content()
    assert panel.evaluate(CANVAS) != ""


def test_units_are_linked_across_tabs(lens: Notebook):
    page = lens.page
    open_tab(page, "Activations")
    choose(page, "layer", "stage3")
    grid = page.locator(".cnnlens-panel:visible[data-kind='grid']").first
    page.wait_for_function("el => el.querySelector('.cl-title').textContent.startsWith('stage3')",
                           arg=grid.element_handle(), timeout=60_000)
    grid.locator("canvas.cl-canvas").click(position={"x": 5, "y": 5})  # feature map #0 of stage3
    open_tab(page, "Features")
    image = visible_panels(page).first
    wait_title(page, image, "stage3:0 · ", SYNTH_TIMEOUT)
    settled(page)
    set_slider(page, "unit", 6)
    open_tab(page, "DeconvNet")
    wait_title(page, visible_panels(page).first, "unit stage3:6", 60_000)
    set_slider(page, "unit", 9)
    open_tab(page, "Features")
    wait_title(page, image, "stage3:9 · ", SYNTH_TIMEOUT)
    settled(page)
    lens.screenshot("synthesis_linked_features", page.locator(".widget-tab:visible").first)


def test_an_engine_error_shows_in_a_view_used_alone(open_notebook):
    notebook = open_notebook("synthesis_error.ipynb", [
        "import torch, cnnlens as cl\n"
        "from torch import nn\n"
        "class Small(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(3, 6, 3, padding=1)\n"
        "    def forward(self, x):\n"
        "        if x.shape[-1] > 40:\n"
        "            raise ValueError(f'this model takes at most 40 px, got {x.shape[-1]}')\n"
        "        return self.conv(x).relu().mean((2, 3))\n"
        "cl.widgets.FeaturesView(Small(), torch.rand(2, 3, 32, 32), steps=32, size=32)",
    ])
    page = notebook.page
    settled(page)
    image = visible_panels(page).first
    good = image.evaluate(CANVAS)
    set_slider(page, "size", 64)
    page.wait_for_function("el => el.dataset.status === 'error'", arg=image.element_handle(), timeout=60_000)
    assert "at most 40 px, got 64" in image.locator(".cl-error").text_content()
    assert image.evaluate(CANVAS) == good  # the last good image stays
    notebook.screenshot("synthesis_error", page.locator(".jp-OutputArea-output").first)
    set_slider(page, "size", 24)
    page.wait_for_function("el => el.dataset.status === 'idle' && !el.querySelector('.cl-error').textContent",
                           arg=image.element_handle(), timeout=60_000)
