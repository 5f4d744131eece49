"""Progress reporting and cancellation shared by all long work.

A long method takes ``progress`` (a callable ``progress(done, total)``) and
``cancel`` (a :class:`CancelToken`, or any callable returning True when the work
should stop). The widgets drive the same functions a script calls.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

ProgressFn = Callable[[int, int], None]


class Cancelled(Exception):
    """Raised inside long work when its cancellation token was set."""


class CancelToken:
    """A thread-safe flag: ``token.cancel()`` asks running work to stop at its next step."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def __call__(self) -> bool:
        return self._event.is_set()


class Steps:
    """Step counter for one piece of long work: reports progress and checks cancellation."""

    def __init__(self, total: int, progress: ProgressFn | None = None,
                 cancel: CancelToken | Callable[[], bool] | None = None):
        if cancel is not None and not callable(cancel):
            raise TypeError(f"cancel must be a CancelToken or a callable returning bool, got {type(cancel).__name__}.")
        if progress is not None and not callable(progress):
            raise TypeError(f"progress must be a callable progress(done, total), got {type(progress).__name__}.")
        self.total = total
        self.done = 0
        self._progress = progress
        self._cancel = cancel

    def check(self) -> None:
        """Raise :class:`Cancelled` if cancellation was requested."""
        if self._cancel is not None and self._cancel():
            raise Cancelled("cancelled")

    def advance(self, n: int = 1) -> None:
        """Count ``n`` finished steps, report them, and check for cancellation."""
        self.done = min(self.done + n, self.total)
        if self._progress is not None:
            self._progress(self.done, self.total)
        self.check()
