"""SIGTERM and SIGHUP end a run the way Ctrl-C does.

``kill``, ``timeout``, Slurm, ``docker stop`` and a closed terminal send SIGTERM or SIGHUP, whose
default action ends the process at once: no message, temporary files left behind, and a training
run loses the ``last.pt`` that Ctrl-C saves. :func:`install` makes both raise :class:`Terminated`
in the main thread, a :class:`KeyboardInterrupt`, so every ``except KeyboardInterrupt`` handles
them as it handles Ctrl-C (``train`` saves ``last.pt``, ``evaluate`` keeps the finished pairs, an
output set removes its temporary files). The command line then prints one line and exits with
128 + the signal's number (130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP).

Only the first SIGTERM or SIGHUP raises: a second one, sent while the run is cleaning up, is
ignored so that the cleanup finishes (SIGKILL still ends the process at once). A second Ctrl-C
keeps Python's behaviour.
"""

from __future__ import annotations

import signal
import threading

_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP was received; ``number`` is the signal's number."""

    def __init__(self, number: int):
        self.number = int(number)
        super().__init__(signal.Signals(self.number).name)


def _raise_once(number, _frame):
    for other in _SIGNALS:
        signal.signal(other, signal.SIG_IGN)
    raise Terminated(number)


def install() -> dict:
    """Turn SIGTERM and SIGHUP into :class:`Terminated` (main thread only; elsewhere nothing changes).

    Returns the handlers it replaced, for :func:`restore`."""
    previous = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    for number in _SIGNALS:
        handler = signal.getsignal(number)
        if handler is not signal.SIG_IGN:  # nohup's SIGHUP stays ignored
            previous[number] = handler
            signal.signal(number, _raise_once)
    return previous


def restore(previous: dict) -> None:
    """Put back the handlers :func:`install` replaced (for callers of ``cli.main`` in a longer-lived process)."""
    if threading.current_thread() is threading.main_thread():
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)


def interruption(exc: KeyboardInterrupt) -> tuple[str, int]:
    """The one-line message and the exit code for an interruption."""
    if isinstance(exc, Terminated):
        return f"interrupted by {signal.Signals(exc.number).name}", 128 + exc.number
    return "interrupted", 128 + int(signal.SIGINT)
