"""How a panel lays itself out in the browser: markers that follow a final result with an unchanged picture,
titles that wrap within their picture, grids at whole multiples of their pixels, pictures that fit a narrow
notebook."""

from __future__ import annotations

CELL = """
import torch
from cnnlens.widgets import Panel
picture = Panel("heatmap", "")
picture.size = 120
picture.next_partial = True
image = torch.rand(3, 40, 40)
picture.show(image, title="a title long enough to run into the next panel's title: " + "x" * 60)
grid = Panel("grid", "tiles")
grid.size = 200  # 4×4 tiles of 40 px with 1 px gaps: 164 px, 1.22×
grid.show_grid(torch.rand(16, 3, 40, 40), title="tiles")
wide = Panel("heatmap", "wide")
wide.size = 900
wide.show(torch.rand(3, 90, 90), title="wide")
display(picture, grid, wide)
"""


def test_markers_titles_and_sizes(open_notebook):
    notebook = open_notebook("panel_display.ipynb", [CELL])
    page = notebook.page
    panels = page.locator(".cnnlens-panel")
    page.wait_for_function("() => document.querySelectorAll('.cnnlens-panel[data-render-count]').length === 3",
                           timeout=60_000)
    picture, grid, wide = panels.nth(0), panels.nth(1), panels.nth(2)
    assert picture.get_attribute("data-partial") == "true"
    # the final result, the same picture: no redraw, yet the marker says it is final
    notebook.run_code("picture.next_partial = False\npicture.show(image, title=picture.title)\nprint('FINAL')", "FINAL")
    page.wait_for_function("el => el.dataset.partial === 'false'", arg=picture.element_handle(), timeout=30_000)
    title_width = picture.locator(".cl-title").evaluate("el => el.getBoundingClientRect().width")
    assert title_width <= 240.5, title_width  # wraps within max(its 120 px picture, 240 px), not 300
    canvas = grid.locator("canvas.cl-canvas")
    sizes = canvas.evaluate("c => [c.width, parseFloat(c.style.width)]")
    assert sizes == [164, 164], sizes  # 1×, not 1.22×
    page.set_viewport_size({"width": 700, "height": 900})
    fits = "c => c.getBoundingClientRect().right <= 700"  # (JupyterLab lays the notebook out again first)
    wide_canvas = wide.locator("canvas.cl-canvas")
    page.wait_for_function(fits, arg=wide_canvas.element_handle(), timeout=30_000)
    ratio = wide_canvas.evaluate("c => { const b = c.getBoundingClientRect(); return b.width / b.height; }")
    assert abs(ratio - 1) < 0.02, ratio  # shrunk into the window, still square
    notebook.screenshot("panel_display_narrow")


LONG_JOB = """
import cnnlens as cl
from cnnlens.widgets import FeaturesView
model, data = cl.zoo.shapes()
view = FeaturesView(model, data, layer="stage2", unit=3, steps=100000, size=48, neighbours=0)
view
"""


def test_clearing_the_output_stops_the_job_and_showing_the_view_again_reruns_it(open_notebook):
    notebook = open_notebook("cleared_output.ipynb", [LONG_JOB])
    page = notebook.page
    panel = page.locator(".cnnlens-panel").first
    page.wait_for_function("el => el.dataset.status === 'running'", arg=panel.element_handle(), timeout=60_000)
    page.evaluate("""async () => {
        const app = window.jupyterapp;
        app.shell.currentWidget.content.activeCellIndex = 0;
        await app.commands.execute('notebook:clear-cell-output');
    }""")
    out = notebook.run_code("print('STOPPED', view.runner.wait(30), view.runner.working, view._rerun_when_shown)",
                            "STOPPED")
    assert "STOPPED True False True" in out  # nothing of the view on the page: its job stopped, to run again
    notebook.run_code("view", "")  # shown again: the job runs again
    panel = page.locator(".cnnlens-panel").last
    page.wait_for_function("el => el.dataset.status === 'running'", arg=panel.element_handle(), timeout=60_000)
    out = notebook.run_code("print('AGAIN', view.runner.working)\nview.close()", "AGAIN")
    assert "AGAIN True" in out
