"""SIGTERM and SIGINT as stop requests: a long run ends between two steps with a checkpoint.

```python
with stop_on_signals() as stop:
    for step in ...:
        ...one step...
        if stop.requested:
            path = save_checkpoint(...)
            raise stop.stopped(f"at step {step}", path)
```

Inside :func:`stop_on_signals` the first SIGTERM or SIGINT only records the request
(:attr:`StopRequest.requested`); the loop checks it between steps, writes a checkpoint it can
resume from and raises :class:`RunStopped`, which the command line turns into one line on stderr
and the shell's exit code for that signal (143 for SIGTERM, 130 for SIGINT). A second signal
raises :class:`RunStopped` at once, wherever the program is (checkpoints are written atomically,
so an interrupted write leaves the previous one). Nested contexts share the outermost request; the
outermost raises :class:`RunStopped` when its block ends normally with a request pending (e.g. a
signal that came while a finished run wrote its figures). Outside the main thread the context
installs nothing and never requests a stop. :func:`stop_on_signals` also decorates a function
(``@stop_on_signals()``), whose loop reads the request with :func:`stop_request`.

Outside those loops the command line uses :func:`exit_on_signals`: either signal raises
:class:`RunStopped` at once (as Python's default SIGINT raises KeyboardInterrupt).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "RunStopped",
    "StopRequest",
    "exit_now",
    "exit_on_signals",
    "stop_on_signals",
    "stop_request",
]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunStopped(BaseException):
    """A run stopped on a signal (a BaseException, like KeyboardInterrupt, so that
    ``except Exception`` does not swallow it).

    Attributes:
        signal_number: the signal, e.g. ``signal.SIGTERM``.
        exit_code: the shell's code for a process ended by that signal (128 + its number).
        checkpoint: the checkpoint to resume from, or None when the run wrote none.
    """

    def __init__(self, signal_number: int, message: str, checkpoint: Path | str | None = None):
        super().__init__(message)
        self.signal_number = int(signal_number)
        self.exit_code = 128 + self.signal_number
        self.checkpoint = None if checkpoint is None else Path(checkpoint)


class StopRequest:
    """Whether a stop signal came (:attr:`requested`: its number, or None)."""

    def __init__(self) -> None:
        self.requested: int | None = None

    def __bool__(self) -> bool:
        return self.requested is not None

    def stopped(self, where: str, checkpoint: Path | str | None) -> RunStopped:
        """The error to raise after the checkpoint is written, e.g. ``where = "at step 40"``."""
        name = signal.Signals(self.requested or signal.SIGTERM).name
        resume = f"; its checkpoint {checkpoint} resumes with --resume" if checkpoint else ""
        return RunStopped(self.requested or signal.SIGTERM, f"stopped by {name} {where}{resume}",
                          checkpoint)  # fmt: skip

    def _handle(self, number: int, frame) -> None:
        if self.requested is not None:  # the second signal: stop now
            raise RunStopped(
                number, f"stopped by a second {signal.Signals(number).name} before a checkpoint"
            )
        self.requested = number


_active: list[StopRequest] = []  # the request of the outermost context, while one is open


def exit_now(code: int) -> None:
    """End the process with ``code`` after flushing logs and standard streams, skipping the
    interpreter's teardown (over a second with torch loaded on a busy machine): for a program
    stopped by a signal, whose files are already closed."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def stop_request() -> StopRequest:
    """The request of the open :func:`stop_on_signals` context (outside one: never set)."""
    return _active[0] if _active else StopRequest()


def _install(handler) -> dict:
    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    for number in STOP_SIGNALS:
        signal.signal(number, handler)
    return previous


def _restore(previous: dict) -> None:
    for number, handler in previous.items():
        # None: a handler installed outside Python (e.g. SDL's); the default replaces it
        signal.signal(number, signal.SIG_DFL if handler is None else handler)


@contextlib.contextmanager
def exit_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise :class:`RunStopped` at once while the block runs (inside it, a
    :func:`stop_on_signals` context turns them into stop requests instead)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(number: int, frame) -> None:
        raise RunStopped(number, f"stopped by {signal.Signals(number).name}")

    previous = _install(handle)
    try:
        yield
    finally:
        _restore(previous)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Turn SIGTERM and SIGINT into a stop request while the block runs (module docstring)."""
    if _active:
        yield _active[0]
        return
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = _install(request._handle)
    _active.append(request)
    try:
        yield request
    finally:
        _active.pop()
        _restore(previous)
    if request.requested is not None:
        name = signal.Signals(request.requested).name
        raise RunStopped(request.requested, f"stopped by {name} after its last checkpoint")
