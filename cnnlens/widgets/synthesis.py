"""What the synthesis views share: deferred work, streamed images that stay when stopped, PNG export.

Synthesis is seconds to minutes of optimization, so these views compute only
while they are *active*: alone they always are; in the Lens only while their
tab is open (a change made meanwhile, e.g. a unit chosen in another tab, is
computed when the tab opens). Stop keeps the last streamed image as the
result (its title says where it stopped), so it can still be saved.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import ipywidgets as W
import torch

from ..core.display import to_uint8
from ..core.progress import Cancelled
from .base import Deferred, View
from .panel import Panel

GAP = 2  # white pixels between images tiled in a row


def tile_row(images: torch.Tensor, gap: int = GAP) -> torch.Tensor:
    """N×C×H×W images side by side as one C×H×(N·W + gaps) image, white between them."""
    images = images.detach().float().cpu()
    n, c, h, w = images.shape
    row = torch.ones(c, h, n * w + gap * (n - 1))
    for i, image in enumerate(images):
        row[:, :, i * (w + gap):i * (w + gap) + w] = image
    return row


def stretch(images: torch.Tensor, low: float = 0.005, high: float = 0.995) -> torch.Tensor:
    """Each image's contrast stretched for display: its ``low``..``high`` quantiles (all channels) to 0..1.

    What the Keras post's ``deprocess_image`` and Yosinski's toolbox do before showing an image; an image
    that already spans [0, 1] (lucid, raw) barely changes, a nearly flat one (keras: a few steps from gray)
    shows its pattern.
    """
    flat = images.detach().float().flatten(1)
    if flat.shape[1] > 1_000_000:  # quantile's limit: estimate from a strided sample
        flat = flat[:, ::flat.shape[1] // 1_000_000 + 1]
    lo = torch.quantile(flat, low, dim=1).view(-1, *[1] * (images.dim() - 1))
    hi = torch.quantile(flat, high, dim=1).view(-1, *[1] * (images.dim() - 1))
    return ((images.float() - lo) / (hi - lo).clamp(min=1e-6)).clamp(0, 1)


def png_bytes(image: torch.Tensor) -> bytes:
    """A C×H×W image in [0, 1] (gray or RGB) as PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def style() -> dict:
    return {"description_width": "initial"}


class SynthesisView(Deferred, View):
    """A view whose job optimizes images; see the module doc.

    Subclasses implement ``refresh()`` with :meth:`stream_job`, and set ``uses_image`` when the result
    depends on the image picker (Deep Dream, inversion) rather than on the model alone (features, classes).
    """

    uses_image = False

    def __init__(self, model: torch.nn.Module, images: Any, panels: Sequence[Panel], controls: Sequence[W.Widget],
                 index: W.IntSlider | None = None, *, active: bool = True):
        self._active = active
        self._stale = False
        self._drawn: tuple | None = None  # (draw, result, state) of the result shown last: redrawn on display changes
        self.saved = b""  # the bytes of the last "save PNG"
        super().__init__(model, images, panels, controls, index)

    def activate(self) -> None:
        """Compute from now on: a job paused when the tab was left goes on where it was."""
        self.runner.resume()
        super().activate()

    def deactivate(self) -> None:
        """The tab was left: its running job pauses at its next step (the tab in view gets the CPU)."""
        super().deactivate()
        self.runner.pause()

    def image_changed(self) -> None:
        if self.uses_image:
            self.request()

    def changed(self, change: dict) -> None:
        """An observer for controls: the user's changes (not the view's own) request a recompute."""
        if not self.quiet(change):
            self.request()

    # --- streaming ----------------------------------------------------------------------------

    def stream_job(self, job: Callable[[Any, Any, Callable[[Any], None]], Any],
                   draw: Callable[[Any, str], None]) -> None:
        """Submit ``job(progress, cancel, partial)``; ``draw(result, state)`` shows partial results
        (state "running"), the final one ("done"), or the last partial when stopped ("stopped")."""
        self._check_open()

        def compute(progress, cancel, partial):
            last: list = []

            def stream(result):
                last[:] = [result]
                partial((result, "running"))

            try:
                return job(progress, cancel, stream), "done"
            except Cancelled:
                if last:  # published only if this job is still the newest (Stop), never after a newer one
                    return last[0], "stopped"
                raise

        def publish(outcome):
            self._drawn = (draw, *outcome)
            draw(*outcome)

        self.runner.submit(compute, publish)

    def redraw(self, _change: Any = None) -> None:
        """Draw the last result again (a display option changed: nothing is recomputed)."""
        if self._drawn is not None and not self.closed:
            draw, result, state = self._drawn
            draw(result, state)

    def shown(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` as displayed (and saved): contrast-stretched when the view has a ticked ``contrast`` box."""
        box = getattr(self, "contrast", None)
        return stretch(images) if box is not None and box.value else images

    def close(self) -> None:
        self._drawn = None
        super().close()

    # --- saving -------------------------------------------------------------------------------

    def current_image(self) -> torch.Tensor | None:
        """The image "save PNG" writes (C×H×W in [0, 1]); None before the first result."""
        return None

    def filename(self) -> str:
        return "cnnlens.png"

    def png(self) -> bytes:
        """The current image as PNG bytes (full resolution)."""
        image = self.current_image()
        if image is None:
            raise RuntimeError(f"This {type(self).__name__} has no image yet: wait for the first result.")
        return png_bytes(image)

    def save_png(self, panel: Panel) -> None:
        """Send the current image to the browser as a PNG download (the "save PNG" button)."""
        self.saved = self.png()
        panel.download(self.saved, self.filename())


def contrast_box() -> W.Checkbox:
    return W.Checkbox(value=True, description="stretch contrast", indent=False,
                      tooltip="display (and save) each image with its contrast stretched, as the Keras post and "
                              "Yosinski et al. do; the model's scores are always on the image itself")


def save_button(view: SynthesisView, panel_of: Callable[[], Panel]) -> W.Button:
    """A "save PNG" button for ``view`` (disabled until there is an image); errors show in the panel."""
    button = W.Button(description="save PNG", icon="download", disabled=True, tooltip="download the image as PNG")

    def clicked(_button: W.Button) -> None:
        panel = panel_of()
        try:
            view.save_png(panel)
        except Exception as error:  # shown in the widget, never raised into the kernel's event loop
            panel.fail(f"save PNG: {error}")

    button.on_click(clicked)
    return button
