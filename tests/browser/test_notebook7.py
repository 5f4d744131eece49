"""The Lens also renders and reacts in Notebook 7."""

from __future__ import annotations

import pytest

from .conftest import KERNEL_READY, start_lab, stop_lab, write_notebook


@pytest.fixture(scope="module")
def notebook7(tmp_path_factory):
    root = tmp_path_factory.mktemp("nb7")
    server, url = start_lab(root, app="notebook")
    yield url, root
    stop_lab(server)


def test_views_render_in_notebook7(notebook7, browser):
    url, root = notebook7
    write_notebook(root, "nb7.ipynb", ["import cnnlens as cl\nlens = cl.demo()\nlens"])
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(f"{url}/notebooks/nb7.ipynb")
    page.wait_for_function("() => window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=120_000)
    page.wait_for_function("() => document.querySelector('.jp-Notebook .jp-Cell')", timeout=60_000)
    page.wait_for_function(KERNEL_READY, timeout=120_000)  # the kernel session attaches after the notebook loads
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.cnnlens-panel')].filter(p => p.offsetParent)"
        ".some(p => +(p.dataset.renderCount || 0) >= 1 && p.dataset.kind === 'grid')", timeout=180_000)
    grid = page.locator(".cnnlens-panel:visible[data-kind='grid']").first
    before = grid.evaluate("el => el.querySelector('canvas').toDataURL()")
    page.locator(".widget-dropdown:visible:has(label:text-is('layer')) select").select_option(label="stage3")
    page.wait_for_function("([el, b]) => el.querySelector('canvas').toDataURL() !== b",
                           arg=[grid.element_handle(), before], timeout=60_000)
    page.close()
