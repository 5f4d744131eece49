"""The filter health view standalone in real JupyterLab + Chromium: planted faults are framed on the right tiles,
every control changes the pixels, hover and click name a unit's findings, errors show, text stays text."""

from __future__ import annotations

import pytest

from .conftest import Notebook, run_notebook
from .test_lens_in_jupyterlab import CANVAS, choose, render_count, set_slider, visible_panels

PLANT = """\
import copy, torch
import cnnlens as cl
model, data = cl.zoo.shapes()
sick = copy.deepcopy(model)
with torch.no_grad():
    w = sick.stage1.conv1.weight
    w[5] = w[2] + 0.05 * w[2].std() * torch.randn(w[2].shape, generator=torch.Generator().manual_seed(0))
    w[7] = torch.rot90(w[3], 1, (-2, -1))
    w[9] = w[4].flip(-2)
    w[11] = -w[6]
    sick.stage1.bn1.weight[13] = 0.0
    sick.stage1.bn1.bias[13] = -1.0
    w[14] = 0.0
"""
TIMEOUT = 120_000
# the RGB of one canvas pixel (canvas coordinates, not CSS pixels)
PIXEL = """(el, [x, y]) => [...el.querySelector('canvas.cl-canvas').getContext('2d')
    .getImageData(x, y, 1, 1).data.slice(0, 3)]"""
TILE_W, TILE_H, COLS = 45 + 1, 57 + 1, 4  # a 3×3 kernel's tile with its frames and caption, the 1 px gap; 16 tiles


@pytest.fixture(scope="module")
def health(lab, browser):
    cells = [PLANT + "view = cl.widgets.FilterHealthView(sick, data)\nview"]
    notebook = run_notebook(lab, browser, "health.ipynb", cells)
    yield notebook
    notebook.page.close()


def settled(page, panel, before: int = 0) -> None:
    page.wait_for_function("([el, n]) => +(el.dataset.renderCount || 0) > n && el.dataset.status !== 'running'",
                           arg=[panel.element_handle(), before], timeout=TIMEOUT)


def frame(panel, unit: int) -> list[int]:
    """The colour of ``unit``'s outermost frame ring."""
    x, y = (unit % COLS) * TILE_W + 1, (unit // COLS) * TILE_H + 1
    return panel.evaluate(PIXEL, [x, y])


def counts(panel) -> dict[str, int]:
    """The pair counts in the panel's title ("… pairs: duplicate 1, rotated 2, opposite 1")."""
    listed = panel.locator(".cl-title").text_content().split("pairs: ")[1]
    return {kind: int(n) for kind, n in (part.split(" ") for part in listed.split(", "))}


def changed(page, panel, act) -> None:
    before, count = panel.evaluate(CANVAS), render_count(panel)
    act()
    settled(page, panel, count)
    assert panel.evaluate(CANVAS) != before


def test_planted_faults_are_framed_and_named(health: Notebook):
    page = health.page
    panel = visible_panels(page).first
    settled(page, panel)
    assert panel.locator(".cl-title").text_content() == (
        "stage1.conv1 · 16 filters · 2 dead · pairs: duplicate 1, rotated 2, opposite 1")
    assert panel.evaluate("el => [el.querySelector('canvas.cl-canvas').width, "
                          "el.querySelector('canvas.cl-canvas').height]") == [4 * TILE_W, 4 * TILE_H]
    orange, green, purple, dark, white = [255, 115, 0], [0, 168, 77], [191, 0, 230], [31, 31, 31], [255, 255, 255]
    expected = {0: white, 2: orange, 5: orange, 3: green, 7: green, 4: green, 9: green, 6: purple, 11: purple,
                13: dark, 14: dark, 15: white}
    for unit, color in expected.items():
        assert all(abs(a - b) <= 2 for a, b in zip(frame(panel, unit), color)), (unit, frame(panel, unit))
    findings = page.locator(".cl-health-findings").text_content()
    assert "dead: 13, 14" in findings and "duplicate: 2~5 +0.999" in findings
    assert "3~7 +1.000 rot90" in findings and "4~9 +1.000 flip-v" in findings
    assert "opposite phase: 6~11 -1.000" in findings
    canvas = panel.locator("canvas.cl-canvas")
    box = canvas.bounding_box()
    scale = box["width"] / (4 * TILE_W)
    where = {"x": (3 * TILE_W + 20) * scale, "y": (1 * TILE_H + 20) * scale}  # unit 7
    canvas.hover(position=where)
    assert panel.locator(".cl-hover").text_content() == "unit 7: rotated copy (rot90) of 3: +1.000"
    canvas.click(position=where)
    page.wait_for_function("() => [...document.querySelectorAll('.widget-html')].some(e => "
                           "e.textContent.includes('unit 7: rotated copy (rot90) of 3'))", timeout=30_000)
    assert panel.locator("canvas.cl-zoom").is_visible()
    # the kernel alone (its tile's frame and caption strip are not blown up), and no [0, 1] range under it
    assert panel.evaluate("el => [el.querySelector('canvas.cl-zoom').width, "
                          "el.querySelector('canvas.cl-zoom').height]") == [33, 33]
    assert panel.locator(".cl-zoom-info").text_content() == ""
    health.screenshot("filter_health", page.locator(".jp-OutputArea-output").last)


def test_every_control_changes_the_pixels(health: Notebook):
    page = health.page
    panel = visible_panels(page).first
    settled(page, panel)
    changed(page, panel, lambda: set_slider(page, "rotated ≥", 0.5))  # more rotated pairs framed
    assert counts(panel)["rotated"] > 2
    changed(page, panel, lambda: set_slider(page, "opposite ≤ −", 0.5))
    assert counts(panel)["opposite"] > 1
    changed(page, panel, lambda: set_slider(page, "duplicate ≥", 1.0))  # the planted pair's cosine is 0.999
    assert counts(panel)["duplicate"] == 0
    changed(page, panel, lambda: choose(page, "layer", "stage4.conv1"))
    assert panel.locator(".cl-title").text_content().startswith("stage4.conv1 · 128 filters · 0 dead")
    health.screenshot("filter_health_stage4", page.locator(".jp-OutputArea-output").last)
    for label, value in (("rotated ≥", 0.95), ("opposite ≤ −", 0.9), ("duplicate ≥", 0.95)):
        set_slider(page, label, value)
    changed(page, panel, lambda: choose(page, "layer", "stage1.conv1"))


def test_errors_show_and_names_stay_text(open_notebook):
    evil = "<img src=x onerror=alert(1)>"
    notebook = open_notebook("health_errors.ipynb", [
        PLANT + f"sick.stage1.add_module({evil!r}, torch.nn.Conv2d(16, 4, 3))\n"
        "bad = cl.widgets.FilterHealthView(sick, torch.rand(4, 5, 64, 64))\nbad",
        f"named = cl.widgets.FilterHealthView(sick, layer='stage1.' + {evil!r})\nnamed",
    ])
    page = notebook.page
    failed, named = visible_panels(page).first, visible_panels(page).nth(1)
    page.wait_for_function("el => el.dataset.status === 'error'", arg=failed.element_handle(), timeout=TIMEOUT)
    assert "x has 5 channels; the model expects 3" in failed.locator(".cl-error").text_content()
    settled(page, named)
    title = named.locator(".cl-title").text_content()
    assert title.startswith(f"stage1.{evil} · 4 filters"), title
    assert evil in page.locator(".cl-health-findings").last.text_content()
    assert page.locator(".jp-OutputArea-output img").count() == 0 and notebook.alerts == []
    notebook.screenshot("filter_health_errors", page.locator(".jp-Notebook"))
