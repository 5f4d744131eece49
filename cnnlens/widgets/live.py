"""Live computation for the views: one worker thread, latest request wins.

A control change submits a job. If a job is running it is cancelled through
its token (long methods stop at their next step) and its result, if any, is
dropped: only the newest job publishes. Progress goes to the view's panels,
errors show inside them (message, and the full traceback behind "details";
the last good image stays) and never reach the kernel, which stays usable.

The worker thread ("cnnlens-live") exists only while there is work: it ends
as soon as no job is pending, so an idle view holds no thread and no job (nor
the model a job's closure refers to). ``close()`` cancels the running job,
waits for the thread and refuses new work. ``pause()`` holds the running job at
its next progress report (a Lens tab left: the tab in view gets the CPU) until
``resume()``; a newer job, Stop or ``close()`` still cancels it.
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
THREAD_NAME = "cnnlens-live"  # the worker; its progress timers are named "cnnlens-progress"
CLOSE_TIMEOUT = 10.0  # seconds close() waits for a running job to notice its cancellation
PAUSE_POLL = 0.1  # seconds between two looks at a paused job's cancellation

Compute = Callable[[Callable[[int, int], None], CancelToken, Callable[[Any], None]], Any]


class _Job:
    """One job's display state: its progress timer and the job's own end race for the panels under ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.shown = False  # the progress bar went up
        self.finished = False  # the final state (idle or error) is set: nothing may show "running" after it


class LiveRunner:
    """Runs ``compute(progress, cancel, partial)`` jobs for ``panels`` in a background thread."""

    def __init__(self, panels: Sequence[Panel]):
        self.panels = list(panels)
        self._lock = threading.Condition()
        self._pending: tuple[int, Compute, Callable[[Any], None]] | None = None
        self._generation = 0
        self._token: CancelToken | None = None
        self._busy = False
        self._thread: threading.Thread | None = None
        self.closed = False
        self._go = threading.Event()  # cleared while paused
        self._go.set()
        self.completed = 0
        self.last_error: str | None = None
        for panel in self.panels:
            panel.on_stop(self.stop)

    def submit(self, compute: Compute, publish: Callable[[Any], None]) -> None:
        """Run ``compute`` and hand its result to ``publish`` unless a newer job arrives first."""
        with self._lock:
            if self.closed:
                raise RuntimeError("This view is closed and computes nothing more; make a new view.")
            self._generation += 1
            self._pending = (self._generation, compute, publish)
            if self._token is not None:
                self._token.cancel()
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=THREAD_NAME, daemon=True)
                self._thread.start()
            self._lock.notify_all()

    def pause(self) -> None:
        """Hold the running job (and later ones) at their next progress report, until :meth:`resume`."""
        self._go.clear()

    def resume(self) -> None:
        self._go.set()

    @property
    def paused(self) -> bool:
        return not self._go.is_set()

    @property
    def working(self) -> bool:
        """A job is running or waiting to run."""
        with self._lock:
            return self._busy or self._pending is not None

    def stop(self) -> None:
        """Cancel the running job (the Stop button)."""
        with self._lock:
            self._pending = None
            if self._token is not None:
                self._token.cancel()

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Cancel the running job, drop the pending one, wait for the worker to end; no more jobs after this."""
        with self._lock:
            self.closed = True
            self._pending = None
            self._generation += 1  # whatever still runs publishes nothing
            if self._token is not None:
                self._token.cancel()
            thread = self._thread
            self._lock.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        for panel in self.panels:
            panel.remove_stop(self.stop)
        self.panels = []

    def wait(self, timeout: float = 60.0) -> bool:
        """Block until no job is pending or running (for scripts, notebooks and tests)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending is not None or self._busy or self._thread is not None:
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
                if self._pending is None:  # idle: the thread ends (the next submit starts another)
                    self._thread = None
                    self._lock.notify_all()
                    return
                generation, compute, publish = self._pending
                self._pending = None
                self._token = token = CancelToken()
                self._busy = True
            try:
                self._run(generation, compute, publish, token)
            finally:
                del compute, publish  # the job's closures (and the model they hold) go with the job
                with self._lock:
                    self._busy = False
                    self._token = None
                    self._lock.notify_all()

    def _run(self, generation: int, compute: Compute, publish: Callable[[Any], None], token: CancelToken) -> None:
        job = _Job()
        last = [0.0]

        def show_running(fraction: float = 0.0) -> None:
            with job.lock:  # a timer firing late must not cover the final state
                if job.finished or not self._current(generation):
                    return
                job.shown = True
                for panel in self.panels:
                    panel.running(fraction)

        def progress(done: int, total: int) -> None:
            while not self._go.is_set() and not token.cancelled:  # paused: wait, still cancellable
                self._go.wait(PAUSE_POLL)
            now = time.monotonic()
            if job.shown and (now - last[0] > 0.05 or done == total):  # at most 20 updates a second
                last[0] = now
                show_running(done / max(total, 1))

        last_partial = [-PARTIAL_EVERY]

        def partial(result: Any) -> None:
            now = time.monotonic()
            if now - last_partial[0] >= PARTIAL_EVERY and self._publish(generation, publish, result):
                last_partial[0] = now

        # progress is only shown for work that takes a while: fewer messages
        timer = threading.Timer(SHOW_PROGRESS_AFTER, show_running)
        timer.name = "cnnlens-progress"
        timer.daemon = True
        timer.start()
        start = time.perf_counter()
        try:
            try:
                result = compute(progress, token, partial)
            except Cancelled:
                self._end(job)
                return
            except Exception as error:  # shown in the widget; the kernel stays usable
                self._fail(job, generation, error)
                return
            elapsed = (time.perf_counter() - start) * 1000
            try:
                if self._publish(generation, publish, result, elapsed):
                    self.completed += 1
                    self.last_error = None
            except Exception as error:
                self._fail(job, generation, error)
                return
            self._end(job)
        finally:
            timer.cancel()
            if timer is not threading.current_thread() and hasattr(timer, "join"):
                timer.join()

    def _publish(self, generation: int, publish: Callable[[Any], None], result: Any,
                 compute_ms: float | None = None) -> bool:
        """Publish ``result`` if its job is still the newest; no newer job can be submitted meanwhile.

        (A control change submits through the same lock, so a result is never drawn over the user's newer choice.)
        """
        with self._lock:
            if generation != self._generation:
                return False
            for panel in self.panels:
                panel.next_partial = compute_ms is None
                if compute_ms is not None:
                    panel.next_compute_ms = compute_ms
            publish(result)
            return True

    def _end(self, job: _Job) -> None:
        """The final state: idle, progress hidden (a progress timer that fires later changes nothing)."""
        with job.lock:
            job.finished = True
            for panel in self.panels:
                if job.shown or panel.status != "idle":
                    panel.done()

    def _fail(self, job: _Job, generation: int, error: BaseException) -> None:
        self.last_error = "".join(traceback.format_exception_only(type(error), error)).strip()
        details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        with job.lock:
            job.finished = True
            if self._current(generation):
                for panel in self.panels:
                    panel.fail(self.last_error, details)
            elif job.shown:
                for panel in self.panels:
                    panel.done()
