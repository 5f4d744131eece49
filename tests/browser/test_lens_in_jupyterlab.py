"""Every view of the Lens in real JupyterLab + Chromium: renders, reacts to controls, stops, shows errors."""

from __future__ import annotations

import pytest

from .conftest import Notebook, run_notebook

CANVAS = "el => { const c = el.querySelector('canvas.cl-canvas'); return c && !c.hidden ? c.toDataURL() : '' }"


@pytest.fixture(scope="module")
def demo(lab, browser):
    notebook = run_notebook(lab, browser, "demo.ipynb", ["import cnnlens as cl\nlens = cl.demo()\nlens"], height=1200)
    yield notebook
    notebook.page.close()


def pixels_changed(page, panel, before: str, timeout: float = 60_000) -> None:
    """Wait until ``panel``'s canvas shows other pixels than ``before`` (a CANVAS reading)."""
    page.wait_for_function(f"([el, p]) => ({CANVAS})(el) !== p", arg=[panel.element_handle(), before],
                           timeout=timeout)


def redrawn(page, panel, act, timeout: float = 60_000) -> None:
    """Run ``act`` and wait until ``panel``'s pixels change."""
    before = panel.evaluate(CANVAS)
    act()
    pixels_changed(page, panel, before, timeout)


def visible_panels(page):
    return page.locator(".cnnlens-panel:visible")


def wait_rendered(page, count: int = 1, timeout: float = 60_000) -> None:
    page.wait_for_function(
        f"""() => {{ const ps = [...document.querySelectorAll('.cnnlens-panel')].filter(p => p.offsetParent);
                    return ps.length > 0 && ps.every(p => +(p.dataset.renderCount || 0) >= {count}); }}""",
        timeout=timeout)


def open_tab(page, title: str) -> None:
    page.locator(".lm-TabBar-tab", has_text=title).first.click()
    page.wait_for_function(
        """title => [...document.querySelectorAll('.lm-TabBar-tab.lm-mod-current')]
                     .some(t => t.textContent.includes(title))""",
        arg=title)


def render_count(panel) -> int:
    return int(panel.evaluate("el => +(el.dataset.renderCount || 0)"))


def wait_redraw(page, panel, before: int, pixels: str | None = None, timeout: float = 60_000) -> None:
    """Wait for a new drawing of a final result and an idle panel; with ``pixels``, until the canvas differs
    from them too. (A streamed method's partials can draw, and the panel read idle, before its job reports
    running: the panel's ``partial`` marker tells them from the final result.)"""
    handle = panel.element_handle()
    page.wait_for_function(
        """([el, n, p]) => +(el.dataset.renderCount || 0) > n && el.dataset.status !== 'running'
            && el.dataset.partial !== 'true'
            && (p === null || (() => { const c = el.querySelector('canvas.cl-canvas');
                                      return (c && !c.hidden ? c.toDataURL() : '') !== p; })())""",
        arg=[handle, before, pixels], timeout=timeout)


def wait_title(page, panel, text: str, timeout: float = 60_000) -> None:
    """Wait until the panel's title (set by the kernel with each result) contains ``text``."""
    page.wait_for_function("([el, t]) => el.querySelector('.cl-title').textContent.includes(t)",
                           arg=[panel.element_handle(), text], timeout=timeout)


def choose(page, label: str, option: str) -> None:
    """Pick a dropdown option by its visible text."""
    page.locator(f".widget-dropdown:visible:has(label:text-is('{label}')) select").select_option(label=option)


def set_slider(page, label: str, value: int) -> None:
    readout = page.locator(f".widget-slider:visible:has(label:text-is('{label}')) .widget-readout")
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(str(value))
    page.keyboard.press("Enter")


def slider_value(page, label: str) -> int:
    return int(page.locator(f".widget-slider:visible:has(label:text-is('{label}')) .widget-readout").text_content())


def test_every_view_renders(demo: Notebook):
    page = demo.page
    for tab, panels in (("Activations", 4), ("Attribution", 1), ("Occlusion", 3), ("DeconvNet", 3)):
        open_tab(page, tab)
        wait_rendered(page)
        assert visible_panels(page).count() == panels
        demo.screenshot(f"view_{tab.lower()}", page.locator(".widget-tab:visible").first)


def test_attribution_controls_change_the_drawing(demo: Notebook):
    page = demo.page
    open_tab(page, "Attribution")
    wait_rendered(page)
    panel = visible_panels(page).first
    for label in ("Gradient saliency", "Occlusion", "LIME"):
        before_pixels, before = panel.evaluate(CANVAS), render_count(panel)
        panel.locator("canvas.cl-canvas").hover()  # the readout shows the value under the cursor...
        assert panel.locator(".cl-hover").text_content().startswith("(")
        page.mouse.move(2, 2)
        assert panel.locator(".cl-hover").text_content() == ""  # ...and goes with the cursor
        choose(page, "method", label)
        wait_redraw(page, panel, before, before_pixels)
        page.wait_for_function("([el, t]) => el.querySelector('.cl-title').textContent.startsWith(t)",
                               arg=[panel.element_handle(), label])  # the title comes back from the kernel
        assert panel.evaluate(CANVAS) != before_pixels, label
    before_pixels, before = panel.evaluate(CANVAS), render_count(panel)
    set_slider(page, "features", 1)  # LIME's own control (one superpixel instead of five: a different drawing;
    # fewer samples can legitimately pick the same five superpixels and draw the same picture)
    wait_redraw(page, panel, before, before_pixels)
    assert panel.evaluate(CANVAS) != before_pixels
    demo.screenshot("attribution_lime", page.locator(".widget-tab:visible").first)
    before_pixels, before = panel.evaluate(CANVAS), render_count(panel)
    choose(page, "hide", "mean")  # what hides a superpixel: another surrogate, another superpixel painted
    wait_redraw(page, panel, before, before_pixels)
    assert panel.evaluate(CANVAS) != before_pixels
    before_pixels, before = panel.evaluate(CANVAS), render_count(panel)  # (read before the change: its result
    choose(page, "hide", "gray")  # may be drawn before a read after it) back to the view's default for the steps below
    wait_redraw(page, panel, before, before_pixels)
    for method, slider, value in (("SmoothGrad", "noise", 0.35), ("Integrated Gradients", "steps", 6)):
        before = render_count(panel)
        choose(page, "method", method)
        wait_redraw(page, panel, before)
        before_pixels, before = panel.evaluate(CANVAS), render_count(panel)
        set_slider(page, slider, value)
        wait_redraw(page, panel, before, before_pixels)
        assert panel.evaluate(CANVAS) != before_pixels, slider
    # display controls change the drawing in the browser alone: no new result from the kernel
    published = demo.run_code("view = lens.views['Attribution']; view.wait(); print('PUBLISHED', view.panel.results)",
                              "PUBLISHED").split()[-1]
    page.wait_for_function("([el, n]) => el.dataset.results === n", arg=[panel.element_handle(), published])
    computed = render_count(panel)
    for change in (lambda: choose(page, "colormap", "viridis"), lambda: set_slider(page, "opacity", 0.2),
                   lambda: page.locator(".widget-checkbox:visible:has-text('signed') input").click()):
        before_pixels = panel.evaluate(CANVAS)
        change()
        pixels_changed(page, panel, before_pixels, 30_000)
    assert panel.locator(".cl-title").text_content().startswith("Integrated Gradients")
    assert panel.evaluate("el => el.dataset.results") == published  # no kernel result arrived meanwhile
    assert render_count(panel) - computed == 3  # three redraws in the page
    # hover shows the value under the cursor
    panel.locator("canvas.cl-canvas").hover(position={"x": 100, "y": 100})
    assert panel.locator(".cl-hover").text_content().startswith("(")
    demo.screenshot("attribution_display_controls", page.locator(".widget-tab:visible").first)


def test_target_and_image_picker_reach_the_kernel(demo: Notebook):
    page = demo.page
    open_tab(page, "Attribution")
    choose(page, "method", "Grad-CAM")
    panel = visible_panels(page).first
    wait_rendered(page)
    before_pixels, before = panel.evaluate(CANVAS), render_count(panel)
    page.locator(".widget-dropdown:visible:has(label:text-is('target')) select").select_option(index=1)
    wait_redraw(page, panel, before, before_pixels)
    assert panel.evaluate(CANVAS) != before_pixels
    before_pixels, before = panel.evaluate(CANVAS), render_count(panel)
    set_slider(page, "image", 7)
    wait_redraw(page, panel, before, before_pixels)
    assert panel.evaluate(CANVAS) != before_pixels


def test_activations_layer_and_zoom(demo: Notebook):
    page = demo.page
    open_tab(page, "Activations")
    wait_rendered(page)
    grid = page.locator(".cnnlens-panel:visible[data-kind='grid']").first
    before_pixels, before = grid.evaluate(CANVAS), render_count(grid)
    choose(page, "layer", "stage3")
    wait_redraw(page, grid, before, before_pixels)
    assert grid.evaluate(CANVAS) != before_pixels
    grid.locator("canvas.cl-canvas").click(position={"x": 5, "y": 5})
    page.wait_for_function("el => el.querySelector('.cl-zoom-info').textContent.startsWith('#0')",
                           arg=grid.element_handle())
    assert "max" in grid.locator(".cl-zoom-info").text_content()


def test_deconvnet_unit_and_layer(demo: Notebook):
    page = demo.page
    open_tab(page, "DeconvNet")
    wait_rendered(page)
    projection = visible_panels(page).nth(1)
    before_pixels, before = projection.evaluate(CANVAS), render_count(projection)
    set_slider(page, "unit", 5)
    wait_redraw(page, projection, before, before_pixels)
    assert projection.evaluate(CANVAS) != before_pixels
    before_pixels, before = projection.evaluate(CANVAS), render_count(projection)
    choose(page, "project", "whole feature map")
    wait_redraw(page, projection, before, before_pixels)
    assert projection.evaluate(CANVAS) != before_pixels
    before_pixels, before = projection.evaluate(CANVAS), render_count(projection)
    choose(page, "layer", "stage2")
    wait_redraw(page, projection, before, before_pixels)
    assert projection.evaluate(CANVAS) != before_pixels
    demo.screenshot("deconvnet_stage2", page.locator(".widget-tab:visible").first)


def test_occlusion_sliders_and_stop(demo: Notebook):
    page = demo.page
    open_tab(page, "Occlusion")
    wait_rendered(page)
    prob = visible_panels(page).first
    before_pixels, before = prob.evaluate(CANVAS), render_count(prob)
    set_slider(page, "mask size", 24)
    wait_redraw(page, prob, before, before_pixels)
    assert prob.evaluate(CANVAS) != before_pixels
    assert visible_panels(page).nth(2).locator(".cl-legend-item").count() >= 1
    # the default stride depends on the machine's speed: move it to a value it does not have
    stride = 8 if slider_value(page, "stride") != 8 else 6
    for change in (lambda: set_slider(page, "stride", stride), lambda: choose(page, "mask value", "zero")):
        before_pixels, before = prob.evaluate(CANVAS), render_count(prob)
        change()
        wait_redraw(page, prob, before, before_pixels)
        assert prob.evaluate(CANVAS) != before_pixels
    # the feature-map panel's title names its layer and unit: wait for the one each change asks for
    unit_panel = visible_panels(page).nth(1)
    before_pixels = unit_panel.evaluate(CANVAS)
    choose(page, "layer", "stage3")
    wait_title(page, unit_panel, "strongest map stage3:")
    assert unit_panel.evaluate(CANVAS) != before_pixels
    strongest = int(unit_panel.locator(".cl-title").text_content().rsplit(":", 1)[1])
    unit = 5 if strongest != 5 else 6
    before_pixels = unit_panel.evaluate(CANVAS)
    set_slider(page, "unit", unit)
    wait_title(page, unit_panel, f"activation of map stage3:{unit}")
    assert unit_panel.evaluate(CANVAS) != before_pixels
    target = page.locator(".widget-dropdown:visible:has(label:text-is('target')) select")
    second = target.locator("option").nth(1).text_content().replace("\xa0", " ")
    name = second.rsplit(" (", 1)[0]
    before_pixels = prob.evaluate(CANVAS)
    target.select_option(index=1)
    wait_title(page, prob, f"P({name})")
    assert prob.evaluate(CANVAS) != before_pixels
    # a long occlusion (every pixel, small mask) is interrupted by Stop
    set_slider(page, "mask size", 3)
    set_slider(page, "stride", 1)
    page.wait_for_function("el => el.dataset.status === 'running'", arg=prob.element_handle(), timeout=30_000)
    prob.locator(".cl-stop").click()
    page.wait_for_function("el => el.dataset.status === 'idle'", arg=prob.element_handle(), timeout=10_000)
    demo.screenshot("occlusion", page.locator(".widget-tab:visible").first)


def test_errors_show_inside_the_widget(demo: Notebook):
    page = demo.page
    open_tab(page, "Attribution")
    choose(page, "method", "Grad-CAM")
    wait_rendered(page)
    panel = visible_panels(page).first
    good = panel.evaluate(CANVAS)
    choose(page, "method", "CAM")
    choose(page, "layer", "stage2")  # CAM needs the GAP layer: a clear error, shown in the panel
    page.wait_for_function("el => el.dataset.status === 'error'", arg=panel.element_handle(), timeout=30_000)
    assert "gradcam" in panel.locator(".cl-error").text_content()
    assert panel.evaluate(CANVAS) != ""  # the last good image stays
    assert good
    # the full traceback is folded behind "details"
    details = panel.locator(".cl-details")
    assert details.is_visible() and not panel.locator(".cl-traceback").is_visible()
    details.locator("summary").click()
    page.wait_for_function("el => el.querySelector('.cl-details').open", arg=panel.element_handle())
    traceback = panel.locator(".cl-traceback").text_content()
    assert traceback.startswith("Traceback (most recent call last)") and "cam.py" in traceback
    assert traceback.rstrip().endswith(panel.locator(".cl-error").text_content())
    assert panel.locator(".cl-traceback *").count() == 0  # text, never HTML
    assert panel.locator(".cl-traceback").evaluate("el => el.scrollWidth > el.clientWidth")  # lines whole: it scrolls
    demo.screenshot("error_details", panel)
    choose(page, "layer", "stage4")
    page.wait_for_function("el => el.dataset.status === 'idle' && !el.querySelector('.cl-error').textContent",
                           arg=panel.element_handle(), timeout=30_000)
    assert not details.is_visible()


def test_target_class_and_compare_mode(demo: Notebook):
    page = demo.page
    open_tab(page, "Attribution")
    choose(page, "method", "Grad-CAM")
    choose(page, "layer", "stage2")
    panel = visible_panels(page).first
    wait_title(page, panel, "Grad-CAM")
    target = page.locator(".widget-dropdown:visible:has(label:text-is('target')) select")
    second = target.locator("option").nth(1).text_content().replace("\xa0", " ")  # the second most probable class
    before = panel.evaluate(CANVAS)
    target.select_option(index=1)
    wait_title(page, panel, f"Grad-CAM · {second}")
    assert panel.evaluate(CANVAS) != before
    # compare: each method in its own panel; CAM cannot run at stage2 and says so in its panel only
    compare = page.locator(".widget-select-multiple:visible:has(label:text-is('compare')) select")
    compare.select_option(label=["Gradient saliency", "CAM"])
    page.wait_for_function(
        """() => { const ps = [...document.querySelectorAll('.cnnlens-panel')].filter(p => p.offsetParent);
                   return ps.length === 2
                          && ps[0].querySelector('.cl-title').textContent.startsWith('Gradient saliency')
                          && ps[1].querySelector('.cl-error').textContent.includes('gradcam'); }""", timeout=60_000)
    assert visible_panels(page).first.evaluate(CANVAS) != ""
    demo.screenshot("attribution_compare", page.locator(".widget-tab:visible").first)
    compare.select_option([])
    page.wait_for_function(
        "() => [...document.querySelectorAll('.cnnlens-panel')].filter(p => p.offsetParent).length === 1")
    choose(page, "layer", "stage4")
    wait_title(page, visible_panels(page).first, "Grad-CAM")


def test_class_names_render_as_text(open_notebook):
    evil = "<img src=x onerror=alert({})>"
    notebook = open_notebook("xss.ipynb", [
        "import cnnlens as cl\n"
        "model, data = cl.zoo.shapes()\n"
        f"cl.configure(model, input_size=64, classes=[{evil!r}.format(i) for i in range(8)])\n"
        "cl.widgets.ActivationsView(model, data)",
    ])
    page = notebook.page
    try:
        wait_rendered(page)
    finally:
        notebook.screenshot("xss")
    bars = page.locator(".cnnlens-panel[data-kind='bars']").first
    page.wait_for_function("el => el.querySelectorAll('.cl-bar-row').length === 5", arg=bars.element_handle())
    texts = bars.locator(".cl-bar-name").all_text_contents()
    assert all(t.startswith("<img src=x onerror=alert(") for t in texts), texts
    assert page.locator(".cnnlens-panel img").count() == 0
    assert notebook.alerts == []
