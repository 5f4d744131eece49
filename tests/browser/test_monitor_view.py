"""The training monitor's timeline in real JupyterLab + Chromium: it grows while the training cell is still
running, each control changes the pixels, and a failed record shows its error above the timeline."""

from __future__ import annotations

from .conftest import Notebook
from .test_lens_in_jupyterlab import CANVAS, choose, redrawn, set_slider, visible_panels
from .test_synthesis_views import SPREAD

TILE = 64 + 1  # a tile and its 1 px gap, in canvas pixels
SETUP = """import time
import torch
import torch.nn.functional as F
import cnnlens as cl

torch.manual_seed(0)
model = cl.zoo.ShapesNet()
cl.configure(model, input_size=64, classes=cl.zoo.CLASSES)
train = cl.zoo.ShapesDataset(160, seed=3)
_, probe = cl.zoo.shapes(32)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
monitor = cl.monitor(model, ["stage1:3", "stage3:12", "stage4:7"], probe)
monitor.record()
view = monitor.view(columns=8)
view"""
TRAIN = """model.train()
for epoch in range(4):
    for s in range(0, len(train), 32):
        loss = F.cross_entropy(model(train.images[s:s + 32]), train.labels[s:s + 32])
        opt.zero_grad()
        loss.backward()
        opt.step()
    monitor.step()
    time.sleep(2.0)
print('trained', len(monitor.records))"""
# the timeline's step row has >= n columns while the last cell still runs (its prompt shows [*])
GROWN_WHILE_RUNNING = """([n, tile]) => { const panel = document.querySelector('.cnnlens-panel');
    const canvas = panel && panel.querySelector('canvas.cl-canvas');
    const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')];
    const running = prompts.length > 0 && prompts[prompts.length - 1].textContent.includes('*');
    return running && canvas && canvas.width >= n * tile; }"""
RUN_LAST = """async (code) => {
    const app = window.jupyterapp;
    const panel = app.shell.currentWidget;
    panel.content.activeCellIndex = panel.content.widgets.length - 1;
    await app.commands.execute('notebook:insert-cell-below');
    panel.content.activeCell.model.sharedModel.setSource(code);
    app.commands.execute('notebook:run-cell');  // not awaited: the cell keeps running
}"""


def columns(panel) -> int:
    return int(panel.evaluate("el => el.querySelector('canvas.cl-canvas').width")) // TILE


def test_timeline_grows_live_controls_redraw_and_errors_show(open_notebook):
    notebook: Notebook = open_notebook("monitor.ipynb", [SETUP])
    page = notebook.page
    page.wait_for_function("() => document.querySelectorAll('.cnnlens-panel canvas.cl-canvas').length >= 5",
                           timeout=120_000)
    panels = visible_panels(page)
    assert panels.count() == 5  # step labels, three units, first-layer filters
    header, unit, filters = panels.first, panels.nth(2), panels.nth(4)
    assert columns(header) == 1  # step 0, recorded before training

    # the training cell: the timeline grows while it runs, not only when it ends
    page.evaluate(RUN_LAST, TRAIN)
    page.wait_for_function(GROWN_WHILE_RUNNING, arg=[2, TILE], timeout=120_000)
    page.wait_for_function("() => [...document.querySelectorAll('.jp-OutputArea-output')]"
                           ".some(o => o.textContent.includes('trained 5'))", timeout=120_000)
    notebook.wait_idle()
    assert columns(header) == columns(unit) == columns(filters) == 5
    for i in range(1, 5):
        assert panels.nth(i).evaluate(SPREAD) > 4, i  # not blank, not flat
    steps = header.locator(".cl-caption").all_text_contents()  # the step of each column, as text
    assert len(steps) == 5 and steps[0] == "step 0" and all(s.startswith("step ") for s in steps)
    assert "stage3:12" in panels.nth(2).locator(".cl-title").text_content()
    page.set_viewport_size({"width": 1500, "height": 1700})  # the whole view in one screenshot
    notebook.screenshot("monitor_view", page.locator(".jp-OutputArea-output:has(.cnnlens-panel)").first)

    # each control changes the pixels
    redrawn(page, unit, lambda: set_slider(page, "columns", 2))
    assert columns(unit) == columns(header) == 2
    height = unit.evaluate("el => el.querySelector('canvas.cl-canvas').height")
    redrawn(page, unit, lambda: choose(page, "rows", "patch"))
    assert unit.evaluate("el => el.querySelector('canvas.cl-canvas').height") < height  # one row, not two
    redrawn(page, unit, lambda: choose(page, "rows", "projection"))

    # a failed record: the error shows above the timeline, the last timeline stays
    before = unit.evaluate(CANVAS)
    notebook.run_code("model.stage4 = torch.nn.Conv2d(64, 4, 1)\nmonitor.step()", "no longer exists")
    page.wait_for_function("el => el.querySelector('.cl-error').textContent.includes('no longer exists')",
                           arg=header.element_handle(), timeout=30_000)
    assert header.locator(".cl-error").is_visible()
    assert unit.evaluate(CANVAS) == before
    notebook.screenshot("monitor_view_error", page.locator(".jp-OutputArea-output:has(.cnnlens-panel)").first)
