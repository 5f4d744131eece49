"""Saved widget state renders the last images in static HTML, with no kernel and no network."""

from __future__ import annotations

import functools
import http.server
import threading

import nbformat
import pytest
from nbclient import NotebookClient
from nbconvert import HTMLExporter

from cnnlens.widgets.export import export_assets, export_html


@pytest.fixture
def serve(tmp_path):
    """Serve ``tmp_path`` on 127.0.0.1 (no kernel anywhere)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path
    server.shutdown()


def _assert_panels_drawn(browser, url: str, minimum: int) -> None:
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    failed = []
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.goto(url)
    page.wait_for_function(
        f"() => [...document.querySelectorAll('.cnnlens-panel')].filter(p => +(p.dataset.renderCount || 0) >= 1)"
        f".length >= {minimum}", timeout=60_000)
    blank = page.evaluate("""() => [...document.querySelectorAll(
            '.cnnlens-panel[data-kind=heatmap] canvas.cl-canvas, .cnnlens-panel[data-kind=image] canvas.cl-canvas')]
        .filter(c => c.offsetParent)
        .map(c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                    return d.some((v, i) => i % 4 !== 3 && v !== d[0]) ? 0 : 1; })
        .reduce((a, b) => a + b, 0)""")
    assert blank == 0
    assert not [u for u in failed if not u.endswith("favicon.ico") and "mathjax" not in u], failed  # nbconvert's own
    page.close()


def test_export_html_renders_offline(serve, browser):
    import cnnlens as cl
    from cnnlens.widgets import OcclusionView

    url, folder = serve
    model, data = cl.zoo.shapes(8)
    view = OcclusionView(model, data)
    assert view.wait(60)
    export_html(view, folder / "occlusion.html")
    _assert_panels_drawn(browser, f"{url}/occlusion.html", 3)


def test_nbconvert_html_renders_saved_widget_state(serve, browser):
    url, folder = serve
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import cnnlens as cl\nfrom cnnlens.widgets import AttributionView\n"
        "model, data = cl.zoo.shapes(8)\nview = AttributionView(model, data)\nassert view.wait(60)\nview")]
    NotebookClient(nb, kernel_name="python3", store_widget_state=True, timeout=300).execute()
    exporter = HTMLExporter(require_js_url="require.js", widget_renderer_url="embed-amd.js")
    body, _ = exporter.from_notebook_node(nb)
    (folder / "notebook.html").write_text(body, encoding="utf-8")
    export_assets(folder)
    _assert_panels_drawn(browser, f"{url}/notebook.html", 1)
