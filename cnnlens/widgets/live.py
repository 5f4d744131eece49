"""Live computation for the views: one worker thread, latest request wins.

A control change submits a job. If a job is running it is cancelled through
its token (long methods stop at their next step) and its result, if any, is
dropped: only the newest job publishes. Progress goes to the view's panels,
errors show inside them (the last good image stays) and never reach the
kernel, which stays usable.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from ..core.progress import Cancelled, CancelToken
from .panel import Panel

SHOW_PROGRESS_AFTER = 0.15  # seconds before a job shows its progress bar and Stop button
PARTIAL_EVERY = 0.1  # seconds between two partial results of one job (fewer messages, the page keeps up)

Compute = Callable[[Callable[[int, int], None], CancelToken, Callable[[Any], None]], Any]


class LiveRunner:
    """Runs ``compute(progress, cancel, partial)`` jobs for ``panels`` in a background thread."""

    def __init__(self, panels: Sequence[Panel]):
        self.panels = list(panels)
        self._lock = threading.Condition()
        self._pending: tuple[int, Compute, Callable[[Any], None]] | None = None
        self._generation = 0
        self._token: CancelToken | None = None
        self._busy = False
        self.completed = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._loop, name="cnnlens-live", daemon=True)
        self._thread.start()
        for panel in self.panels:
            panel.on_stop(self.stop)

    def submit(self, compute: Compute, publish: Callable[[Any], None]) -> None:
        """Run ``compute`` and hand its result to ``publish`` unless a newer job arrives first."""
        with self._lock:
            self._generation += 1
            self._pending = (self._generation, compute, publish)
            if self._token is not None:
                self._token.cancel()
            self._lock.notify_all()

    def stop(self) -> None:
        """Cancel the running job (the Stop button)."""
        with self._lock:
            self._pending = None
            if self._token is not None:
                self._token.cancel()

    def wait(self, timeout: float = 60.0) -> bool:
        """Block until no job is pending or running (for scripts, notebooks and tests)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending is not None or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
        return True

    def _current(self, generation: int) -> bool:
        with self._lock:
            return generation == self._generation

    def _loop(self) -> None:
        while True:
            with self._lock:
                while self._pending is None:
                    self._lock.wait()
                generation, compute, publish = self._pending
                self._pending = None
                self._token = token = CancelToken()
                self._busy = True
            self._run(generation, compute, publish, token)
            with self._lock:
                self._busy = False
                self._token = None
                self._lock.notify_all()

    def _run(self, generation: int, compute: Compute, publish: Callable[[Any], None], token: CancelToken) -> None:
        last = [0.0]
        shown = threading.Event()  # progress is only shown for work that takes a while: fewer messages

        def show_running(fraction: float = 0.0) -> None:
            shown.set()
            for panel in self.panels:
                panel.running(fraction)

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if shown.is_set() and (now - last[0] > 0.05 or done == total):  # at most 20 updates a second
                last[0] = now
                show_running(done / max(total, 1))

        last_partial = [-PARTIAL_EVERY]

        def partial(result: Any) -> None:
            now = time.monotonic()
            if self._current(generation) and now - last_partial[0] >= PARTIAL_EVERY:
                last_partial[0] = now
                publish(result)

        timer = threading.Timer(SHOW_PROGRESS_AFTER, show_running)
        timer.daemon = True
        timer.start()
        start = time.perf_counter()
        try:
            result = compute(progress, token, partial)
        except Cancelled:
            self._finish(timer, shown)
            return
        except Exception as error:  # shown in the widget; the kernel stays usable
            timer.cancel()
            self.last_error = "".join(traceback.format_exception_only(type(error), error)).strip()
            if self._current(generation):
                for panel in self.panels:
                    panel.fail(self.last_error)
            return
        if self._current(generation):
            elapsed = (time.perf_counter() - start) * 1000
            for panel in self.panels:
                panel.next_compute_ms = elapsed
            try:
                publish(result)
            except Exception as error:
                timer.cancel()
                self.last_error = f"{type(error).__name__}: {error}"
                for panel in self.panels:
                    panel.fail(self.last_error)
                return
            self.completed += 1
            self.last_error = None
        self._finish(timer, shown)

    def _finish(self, timer: threading.Timer, shown: threading.Event) -> None:
        timer.cancel()
        for panel in self.panels:
            if shown.is_set() or panel.status != "idle":
                panel.done()
