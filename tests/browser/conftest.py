"""A real browser against a real JupyterLab, both started by the tests.

JupyterLab runs on 127.0.0.1 with an empty token; Debian's Chromium is
driven by Playwright (never `playwright install`). Tests wait on DOM markers
(`data-render-count`, `data-status`, the status bar's "Idle"), not sleeps.
Screenshots go to test-artifacts/screenshots/ for a person to look at.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import NamedTuple

import nbformat
import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent.parent.parent / "test-artifacts" / "screenshots"
LAUNCH_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _quiet_news() -> None:
    """Turn off JupyterLab's news pop-up for this environment."""
    path = Path(sys.prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = json.loads(path.read_text()) if path.is_file() else {}
    settings["@jupyterlab/apputils-extension:notification"] = {"fetchNews": "false", "checkForUpdates": False}
    path.write_text(json.dumps(settings))


class Lab(NamedTuple):
    url: str
    root: Path
    pid: int


def start_lab(root: Path, app: str = "jupyterlab") -> tuple[subprocess.Popen, str]:
    """Start JupyterLab (or ``app="notebook"``: Notebook 7) on 127.0.0.1 serving ``root``; wait until it answers."""
    _quiet_news()
    port = _free_port()
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(root / ".runtime"), PYTHONUNBUFFERED="1")
    log = open(root / "lab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", app, "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         "--IdentityProvider.token=", "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
         f"--ServerApp.root_dir={root}", "--allow-root",
         f"--{'LabApp' if app == 'jupyterlab' else 'JupyterNotebookApp'}.expose_app_in_browser=True"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status", timeout=2)
            return server, url
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError("JupyterLab did not start: " + (root / "lab.log").read_text()[-2000:]) from None
            time.sleep(0.3)


def stop_lab(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(20)
    except subprocess.TimeoutExpired:
        server.kill()


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 serving a temporary folder."""
    root = tmp_path_factory.mktemp("lab")
    server, url = start_lab(root)
    yield Lab(url, root, server.pid)
    stop_lab(server)


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_FLAGS)
        yield chromium
        chromium.close()


def write_notebook(root: Path, name: str, cells: list[str]) -> str:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / name)
    return name


KERNEL_READY = """() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const kernel = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
    return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle'; }"""
ALL_CELLS_RAN = """() => window.jupyterapp.shell.currentWidget.content.widgets
    .filter(cell => cell.model.type === 'code').every(cell => cell.model.executionCount != null)"""


class Notebook:
    """A notebook open in JupyterLab, with its cells run."""

    def __init__(self, page, url: str, name: str):
        self.page = page
        self.alerts: list[str] = []
        page.on("dialog", lambda dialog: (self.alerts.append(dialog.message), dialog.dismiss()))
        workspace = Path(name).stem  # a workspace of its own: no other notebook restored beside it
        page.goto(f"{url}/lab/workspaces/{workspace}/tree/{name}?reset")
        page.wait_for_function("() => window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=120_000)
        page.wait_for_function(KERNEL_READY, timeout=120_000)
        self.wait_idle()

    def wait_idle(self, timeout: float = 120_000) -> None:
        self.page.wait_for_function(
            "() => [...document.querySelectorAll('#jp-main-statusbar *')].some(e => e.textContent.includes('Idle'))",
            timeout=timeout)

    def run_all(self) -> None:
        self.page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        self.page.wait_for_function(ALL_CELLS_RAN, timeout=300_000)
        self.wait_idle(300_000)

    def run_code(self, code: str, marker: str, timeout: float = 120_000) -> str:
        """Append a cell with ``code``, run it, and return its output once it contains ``marker``."""
        self.page.evaluate(
            """async (code) => {
                const app = window.jupyterapp;
                const panel = app.shell.currentWidget;
                panel.content.activeCellIndex = panel.content.widgets.length - 1;
                await app.commands.execute('notebook:insert-cell-below');
                panel.content.activeCell.model.sharedModel.setSource(code);
                await app.commands.execute('notebook:run-cell');
            }""", code)
        self.page.wait_for_function(
            "m => [...document.querySelectorAll('.jp-OutputArea-output')].some(o => o.textContent.includes(m))",
            arg=marker, timeout=timeout)
        outputs = self.page.locator(".jp-OutputArea-output", has_text=marker)
        return outputs.last.text_content()

    def screenshot(self, name: str, locator=None) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        size = self.page.viewport_size
        box = locator.bounding_box() if locator is not None else None
        tall = box is not None and box["height"] + 250 > size["height"]
        if tall:  # the notebook clips an output taller than the window: grow the window for the picture
            self.page.set_viewport_size({"width": size["width"], "height": int(box["height"]) + 250})
        try:
            (locator or self.page).screenshot(path=str(path))
        finally:
            if tall:
                self.page.set_viewport_size(size)
        return path


def run_notebook(lab, browser, name: str, cells: list[str], width: int = 1500, height: int = 1100,
                 **page_options) -> Notebook:
    """Write a notebook of ``cells``, open it in a new page of that size and run it (close its ``page`` after)."""
    url, root, _ = lab
    write_notebook(root, name, cells)
    notebook = Notebook(browser.new_page(viewport={"width": width, "height": height}, **page_options), url, name)
    notebook.run_all()
    return notebook


@pytest.fixture
def open_notebook(lab, browser):
    notebooks = []

    def opener(name: str, cells: list[str]) -> Notebook:
        notebooks.append(run_notebook(lab, browser, name, cells))
        return notebooks[-1]

    yield opener
    for notebook in notebooks:
        notebook.page.close()
