"""The Attribution view's "check" action in real JupyterLab + Chromium: the numbers and the plots show beside the
map, change with the method, hide when the map changes, and errors show inside the check's panels."""

from __future__ import annotations

import pytest

from .conftest import Notebook
from .test_lens_in_jupyterlab import CANVAS, choose, render_count, set_slider, visible_panels, wait_rendered
from .test_synthesis_views import SPREAD

CHECK_TIMEOUT = 120_000  # ms: the randomization maps and both curves on a loaded 2-core machine
CELL = """import cnnlens as cl
from cnnlens.widgets import AttributionView
model, data = cl.zoo.shapes()
view = AttributionView(model, data)
view"""


@pytest.fixture
def view(open_notebook) -> Notebook:
    notebook = open_notebook("attribution_check.ipynb", [CELL])
    wait_rendered(notebook.page)
    return notebook


def check_panels(page):
    """The bars panel with the numbers and the plot panel (visible only once a check ran)."""
    return page.locator(".cnnlens-panel:visible[data-kind='bars']"), \
        page.locator(".cnnlens-panel:visible[data-kind='image']")


def click_check(page) -> None:
    """Press "check" and wait for its numbers (the bars panel's next result)."""
    bars = page.locator(".cnnlens-panel[data-kind='bars']")
    before = render_count(bars) if bars.count() else 0
    page.locator(".widget-button:visible", has_text="check").click()
    page.wait_for_function(
        """n => { const p = document.querySelector('.cnnlens-panel[data-kind=bars]');
                  return !!p && !!p.offsetParent && +(p.dataset.renderCount || 0) > n
                      && p.dataset.status !== 'running'; }""",
        arg=before, timeout=CHECK_TIMEOUT)


def bar_names(panel) -> list[str]:
    return panel.locator(".cl-bar-name").all_text_contents()


def test_check_shows_numbers_and_plots_beside_the_map(view: Notebook):
    page = view.page
    numbers, plot = check_panels(page)
    assert numbers.count() == 0 and plot.count() == 0  # nothing until asked
    click_check(page)
    numbers, plot = check_panels(page)
    names = bar_names(numbers)
    assert names[0] == "randomization: passes" and names[1:3] == ["deletion ↓", "insertion ↑"]
    assert names[3] in ("pointing: hit", "pointing: miss") and names[4] == "mask overlap ↑"
    assert all(p.endswith("%") for p in numbers.locator(".cl-bar-prob").all_text_contents())
    title = plot.locator(".cl-title").text_content()
    assert title.startswith("randomization passes") and "deletion 0." in title and "overlap" in title
    assert plot.evaluate(SPREAD) > 20  # a drawn plot, not a blank image
    assert "Grad-CAM" in numbers.locator(".cl-title").text_content()
    view.screenshot("attribution_check", page.locator(".jp-OutputArea-output").first)

    # another method: the old check hides (it described another map), a new one shows other numbers and pixels
    first_plot = plot.evaluate(CANVAS)
    choose(page, "method", "Guided backprop")
    page.wait_for_function("() => !document.querySelector('.cnnlens-panel[data-kind=bars]').offsetParent")
    wait_rendered(page)
    click_check(page)
    numbers, plot = check_panels(page)
    assert bar_names(numbers)[0] == "randomization: fails"  # Adebayo et al.: guided backprop barely changes
    assert plot.evaluate(CANVAS) != first_plot
    view.screenshot("attribution_check_guided_backprop", page.locator(".jp-OutputArea-output").first)

    # another image: hidden again; the check follows the picker
    set_slider(page, "image", 3)
    page.wait_for_function("() => !document.querySelector('.cnnlens-panel[data-kind=bars]').offsetParent")
    wait_rendered(page)
    click_check(page)
    numbers, _ = check_panels(page)
    assert numbers.locator(".cl-title").text_content().endswith("image 3")


def test_check_errors_show_inside_its_panels(view: Notebook):
    page = view.page
    choose(page, "method", "CAM")
    choose(page, "layer", "stage2")  # CAM needs the GAP layer: the map fails, and so does its check
    main = visible_panels(page).first
    page.wait_for_function("el => el.dataset.status === 'error'", arg=main.element_handle(), timeout=30_000)
    page.locator(".widget-button:visible", has_text="check").click()
    numbers = page.locator(".cnnlens-panel:visible[data-kind='bars']")
    page.wait_for_function("el => el.dataset.status === 'error'", arg=numbers.element_handle(), timeout=CHECK_TIMEOUT)
    assert "layer" in numbers.locator(".cl-error").text_content()
    view.screenshot("attribution_check_error", numbers)
    choose(page, "layer", "stage4")  # a good map again: the failed check hides, a new one computes
    wait_rendered(page)
    click_check(page)
    assert bar_names(check_panels(page)[0])[0].startswith("randomization")
