"""Static HTML: widgets that render their last images with no kernel and no network.

The saved widget state (``drop_defaults=False``, so every trait travels) is
rendered by the Jupyter widgets HTML manager. Its scripts are not fetched
from a CDN: local copies of require.js and the manager (bundled from npm at
package build) and anywidget's AMD module are written next to the page.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import anywidget
from ipywidgets import Widget
from ipywidgets.embed import embed_minimal_html

from .panel import STATIC

REQUIRE_JS = "require.js"
RENDERER_JS = "embed-amd.js"


def export_assets(folder: str | Path) -> list[Path]:
    """Copy require.js, the widget HTML manager and anywidget's module into ``folder``.

    Pages written by :func:`export_html`, or by nbconvert with
    ``--HTMLExporter.require_js_url=require.js --HTMLExporter.widget_renderer_url=embed-amd.js``,
    then render offline from that folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sources = {
        REQUIRE_JS: STATIC / REQUIRE_JS,
        RENDERER_JS: STATIC / RENDERER_JS,
        "anywidget.js": Path(anywidget.__file__).parent / "nbextension" / "index.js",  # AMD: require("anywidget")
    }
    written = []
    for name, source in sources.items():
        if not source.is_file():
            raise RuntimeError(f"{source} is missing: reinstall cnnlens so that its front end is built.")
        shutil.copyfile(source, folder / name)
        written.append(folder / name)
    return written


def export_html(widget: Widget, path: str | Path, title: str = "cnnlens") -> Path:
    """Write ``widget`` with its current state to a self-contained, offline HTML page at ``path``."""
    path = Path(path)
    export_assets(path.parent)
    embed_minimal_html(path, views=[widget], title=title, drop_defaults=False, requirejs=False, cors=False,
                       embed_url=RENDERER_JS)
    page = path.read_text(encoding="utf-8")
    local_require = f"<script src=\"{REQUIRE_JS}\"></script>\n"
    page = page.replace(f"<script src=\"{RENDERER_JS}\"", local_require + f"<script src=\"{RENDERER_JS}\"", 1)
    path.write_text(page, encoding="utf-8")
    return path
