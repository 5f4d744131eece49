"""Browser latency: control change in Chromium → updated image drawn, against the kernel's compute time.

    .venv/bin/python bench/latency.py      # prints a markdown table (also saved to bench/latency.md)

JupyterLab and Debian's Chromium are started as in the browser tests. For
each method, the target-class dropdown of an AttributionView on the default
model is changed 30 times; each change is timed in the page from the change
event to the panel's next drawn frame (its ``data-render-count`` marker).
The kernel reports how long the computation itself took (``data-compute-ms``),
so the overhead — widget messages, transport, drawing — is visible.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.browser.conftest import CHROMIUM, LAUNCH_FLAGS, Notebook, start_lab, stop_lab, write_notebook  # noqa: E402

CHANGE_AND_TIME = """
async () => {
  const panel = [...document.querySelectorAll('.cnnlens-panel')].find(p => p.offsetParent);
  const select = [...document.querySelectorAll('.widget-dropdown')]
    .find(d => d.offsetParent && d.querySelector('label').textContent === 'target').querySelector('select');
  const before = +(panel.dataset.renderCount || 0);
  const drawn = new Promise(resolve => {
    const observer = new MutationObserver(() => {
      if (+(panel.dataset.renderCount || 0) > before && panel.dataset.status !== 'running') {
        observer.disconnect();
        resolve();
      }
    });
    observer.observe(panel, { attributes: true });
  });
  const start = performance.now();
  select.selectedIndex = (select.selectedIndex + 1) % Math.min(select.options.length, 4);
  select.dispatchEvent(new Event('change', { bubbles: true }));
  await drawn;
  return [performance.now() - start, +panel.dataset.computeMs];
}
"""

METHODS = (("Grad-CAM", "gradcam"), ("Gradient saliency", "saliency"), ("CAM", "cam"),
           ("Guided backprop", "guided_backprop"))


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as folder, sync_playwright() as p:
        root = Path(folder)
        server, url = start_lab(root)
        try:
            write_notebook(root, "latency.ipynb", [
                "import cnnlens as cl\nfrom cnnlens.widgets import AttributionView\n"
                "model, data = cl.zoo.shapes()\nview = AttributionView(model, data)\nview"])
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            notebook = Notebook(page, url, "latency.ipynb")
            notebook.run_all()
            page.wait_for_function("() => [...document.querySelectorAll('.cnnlens-panel')].some(p => p.offsetParent "
                                   "&& +(p.dataset.renderCount || 0) >= 1)", timeout=60_000)
            for label, name in METHODS:
                page.locator(".widget-dropdown:visible:has(label:text-is('method')) select").select_option(label=label)
                page.wait_for_function(
                    "t => [...document.querySelectorAll('.cl-title')]"
                    ".some(e => e.offsetParent && e.textContent.startsWith(t))"
                    " && [...document.querySelectorAll('.cnnlens-panel')].every(p => p.dataset.status !== 'running')",
                    arg=label, timeout=60_000)
                samples = [page.evaluate(CHANGE_AND_TIME) for _ in range(33)][3:]  # 3 warm-up changes
                total = statistics.median(s[0] for s in samples)
                compute = statistics.median(s[1] for s in samples)
                overhead = statistics.median(s[0] - s[1] for s in samples)
                rows.append((name, total, compute, overhead))
                print(f"  {name:16} end-to-end {total:6.1f} ms, compute {compute:6.1f} ms, overhead {overhead:6.1f} ms",
                      file=sys.stderr)
            browser.close()
        finally:
            stop_lab(server)
    lines = ["Default model, AttributionView in JupyterLab 4 + Chromium, median of 30 target changes.", "",
             "| method | change → drawn (ms) | kernel compute (ms) | overhead (ms) |", "|---|---:|---:|---:|"]
    lines += [f"| {n} | {t:.1f} | {c:.1f} | {o:.1f} |" for n, t, c, o in rows]
    table = "\n".join(lines)
    print(table)
    (Path(__file__).parent / "latency.md").write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
