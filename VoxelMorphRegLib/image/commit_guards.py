"""What guards a commit: signals held back while files move, and C libraries' messages caught while files are written."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

HELD_SIGNALS = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]


@contextlib.contextmanager
def signals_held():
    """Hold SIGINT, SIGTERM and SIGHUP back while files move; deliver the first one afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = {}
    for number in HELD_SIGNALS:
        handler = signal.getsignal(number)
        if handler in (signal.SIG_IGN, None):
            continue
        previous[number] = handler
        signal.signal(number, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if received:
            number = received[0]
            handler = previous[number]
            if callable(handler):
                handler(number, None)
            else:
                signal.raise_signal(number)


class NativeStderr:
    """Catch what C libraries print on file descriptor 2 while files are written (NIfTI's
    ``** ERROR: NWAD`` lines on a full disk): shown again after a success, dropped after a
    failure, whose one-line error says what went wrong."""

    def __init__(self):
        self.saved = None
        try:
            sys.stderr.flush()
            import tempfile

            self.capture = tempfile.TemporaryFile()
            self.saved = os.dup(2)
            os.dup2(self.capture.fileno(), 2)
        except (OSError, ValueError, AttributeError):
            self.saved = None

    def restore(self, replay: bool) -> None:
        if self.saved is None:
            return
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.saved = None
        self.capture.seek(0)
        text = self.capture.read()
        self.capture.close()
        if replay and text:
            with contextlib.suppress(OSError):
                os.write(2, text)
