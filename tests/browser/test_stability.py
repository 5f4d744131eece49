"""500 control changes in the browser: no hooks left, bounded kernel memory, no leaked object URLs."""

from __future__ import annotations

import psutil

from .conftest import Notebook, write_notebook

COUNT_URLS = """
(() => {
  window.__liveObjectUrls = 0;
  const create = URL.createObjectURL.bind(URL), revoke = URL.revokeObjectURL.bind(URL);
  URL.createObjectURL = (o) => { window.__liveObjectUrls += 1; return create(o); };
  URL.revokeObjectURL = (u) => { window.__liveObjectUrls -= 1; return revoke(u); };
})();
"""


def test_500_control_changes(lab, browser):
    url, root, _ = lab
    write_notebook(root, "stability.ipynb", [
        "import cnnlens as cl\nfrom cnnlens.widgets import AttributionView\n"
        "model, data = cl.zoo.shapes()\nview = AttributionView(model, data)\nview",
    ])
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.add_init_script(COUNT_URLS)
    notebook = Notebook(page, url, "stability.ipynb")
    notebook.run_all()
    panel = page.locator(".cnnlens-panel:visible").first
    page.wait_for_function("el => +(el.dataset.renderCount || 0) >= 1", arg=panel.element_handle(), timeout=60_000)
    target = page.locator(".widget-dropdown:visible:has(label:text-is('target')) select")
    method = page.locator(".widget-dropdown:visible:has(label:text-is('method')) select")
    for i in range(20):  # warm-up: every code path once before measuring memory
        target.select_option(index=i % 5)
    out = notebook.run_code("import os; view.wait(60); print('WARM', os.getpid())", "WARM")
    kernel = psutil.Process(int(out.split("WARM")[1].split()[0]))
    before = kernel.memory_info().rss
    for i in range(500):
        if i % 100 == 50:
            method.select_option(label="Gradient saliency" if i % 200 == 50 else "Grad-CAM")
        else:
            target.select_option(index=i % 5)
    out = notebook.run_code(
        "assert view.wait(120)\n"
        "from cnnlens.core.shadow import shadow\n"
        "mods = list(model.modules()) + list(shadow(model).modules())\n"
        "hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in mods)\n"
        "print('HOOKS', hooks, 'ERROR', view.runner.last_error)", "HOOKS")
    assert "HOOKS 0 ERROR None" in out
    growth = kernel.memory_info().rss - before
    assert growth < 100 * 2**20, f"kernel memory grew by {growth / 2**20:.0f} MB"
    assert page.evaluate("window.__liveObjectUrls") == 0
    assert int(panel.evaluate("el => +el.dataset.renderCount")) > 10
    page.close()
