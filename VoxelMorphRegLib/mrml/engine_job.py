"""What the registration and the training runner share: state, progress, log, events (Qt-free).

The engine writes its events (:mod:`VoxelMorphRegLib.contract`: one JSON object per line, asked
for with ``--events -``) on stdout and its human-readable lines on stderr; the runners read both
merged (:class:`.engine_process.EngineProcess`). :meth:`EngineJob._handle_line` keeps every
human line in the log and hands each event to :meth:`EngineJob._on_event`; this base class takes
care of the ones every job has:

* ``started``: the engine's own process id (behind a launcher, not the started process's);
* ``error``: the one-line message of a failed run;
* ``message``: a note for the user (e.g. a fall-back to the CPU), kept in the log.

Subclasses handle the rest (stages, progress, training steps) in :meth:`EngineJob._on_event`.
"""

from __future__ import annotations

import logging
import time

from ..contract import Error, Event, Message, Started, parse_event
from ..errors import VoxelMorphRegError

IDLE, RUNNING, SUCCEEDED, FAILED, CANCELLED, STOPPED = "idle", "running", "succeeded", "failed", "cancelled", "stopped"


class EngineJob:
    """What a runner of an engine job keeps: state, progress, log, and the callbacks told of them.

    Subclasses name their engine (:attr:`engine_name`, for messages), the states a run ends in
    (:attr:`final_states`), and give ``start()``, ``poll()`` and :meth:`_abort` (what a timeout or
    Ctrl-C in :meth:`_wait_until_finished` does; :attr:`abort_word` says it).
    """

    engine_name = "engine"
    final_states: tuple = (SUCCEEDED, FAILED)
    abort_word = "cancelled"

    def __init__(self, progress_callback=None, log_callback=None, finished_callback=None):
        self.progress_callback = progress_callback
        self.log_callback = log_callback
        self.finished_callback = finished_callback
        self.state = IDLE
        self.progress = 0
        self.stage = ""
        self.log: list[str] = []
        self.events: list[Event] = []
        self.error = ""
        self.command: list[str] = []
        self.process = None  # the EngineProcess, once started
        self.callback_error = ""  # what a failing callback raised (the run's own outcome stands)
        self._engine_error = ""

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    @property
    def finished(self) -> bool:
        return self.state in self.final_states

    # -- callbacks: a failing one is logged, never leaves the job half-finished ------------------

    def _call(self, callback, *args) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception as exc:  # a callback's bug must not leave the run "running" or lose its result
            self.callback_error = f"{type(exc).__name__}: {exc}"
            logging.getLogger("VoxelMorphReg").exception("VoxelMorphReg: a %s callback failed", self.engine_name)

    def _set_progress(self, percent: int, stage: str) -> None:
        self.progress, self.stage = percent, stage
        self._call(self.progress_callback, percent, stage)

    def _add_log(self, line: str) -> None:
        self.log.append(line)
        self._call(self.log_callback, line)

    def _notify_finished(self) -> None:
        self._call(self.finished_callback, self)

    # -- the engine's output -------------------------------------------------------------------

    def _handle_line(self, line: str) -> None:
        if not line.strip():
            return
        event = parse_event(line)
        if event is None:
            self._add_log(line)
            return
        self.events.append(event)
        if isinstance(event, Started):
            if self.process is not None and event.pid:
                self.process.engine_pid = int(event.pid)
        elif isinstance(event, Error):
            self._engine_error = event.message
        elif isinstance(event, Message):
            self._add_log(("warning: " if event.level == "warning" else "") + event.text)
        self._on_event(event)

    def _on_event(self, event: Event) -> None:
        """The job's own events (stages, progress, steps); the base handles started, error, message."""

    def _fallback_error(self, returncode: int) -> str:
        """The error of a run whose engine failed without an error event: exit code and last output line."""
        last = next((line.strip() for line in reversed(self.log) if line.strip() and not line.startswith("$ ")), "")
        detail = f": {last}" if last else ""
        return f"the {self.engine_name} engine stopped with exit code {returncode}{detail}"

    # -- waiting -------------------------------------------------------------------------------

    def _abort(self) -> None:
        raise NotImplementedError

    def _wait_until_finished(self, timeout: float | None, interval: float) -> None:
        """Start if not started; poll until the run is over. On timeout or Ctrl-C, :meth:`_abort` (then raise)."""
        if self.state == IDLE:
            self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not self.poll():
                if deadline is not None and time.monotonic() > deadline:
                    self._abort()
                    raise VoxelMorphRegError(f"{self.engine_name} did not finish within {timeout:g} s; {self.abort_word}")
                time.sleep(interval)
        except KeyboardInterrupt:
            self._abort()
            raise
