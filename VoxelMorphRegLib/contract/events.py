"""The engine's events: one JSON object per line on the ``--events`` channel.

With ``--events -`` the engine writes them on stdout (the human ``[ NN%] stage`` lines stay on
stderr); ``--events PATH`` appends them to a file, ``--events fd:N`` writes them to an inherited
file descriptor. :func:`parse_event` turns a line into an event dataclass, or ``None`` for a line
that is not an event; the engine emits through an :class:`EventChannel`
(:func:`open_event_channel`), the pipelines through a plain callable ``events(event)``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

EVENTS_VERSION = 1
_EVENT_KINDS: dict = {}


def _event(cls):
    """Register an event dataclass under its ``kind``."""
    cls = dataclass(cls)
    _EVENT_KINDS[cls.kind] = cls
    return cls


class Event:
    """Base of the events; ``kind`` is the value of the ``"event"`` key on the channel."""

    kind: ClassVar[str] = ""


@_event
class Started(Event):
    """The engine has started a command (``register``, ``train``...)."""

    kind: ClassVar[str] = "started"
    command: str
    version: str = ""
    pid: int = 0
    events_version: int = EVENTS_VERSION


@_event
class Stage(Event):
    """A stage began; ``percent`` is the whole run's progress when it begins (register: 0-100)."""

    kind: ClassVar[str] = "stage"
    name: str  # machine name: read, model, affine, model_grid, network, refine, integration, field, warp, metrics, write; train: prepare, train
    percent: int
    text: str  # what the human line says


@_event
class Progress(Event):
    """Progress inside a stage: ``done`` of ``total`` (refinement iterations, prepared subjects)."""

    kind: ClassVar[str] = "progress"
    stage: str
    done: int
    total: int
    percent: int | None = None  # the whole run's progress, where the stage maps onto it
    loss: float | None = None
    text: str = ""


@_event
class Step(Event):
    """One training step (emitted every few steps); seconds are wall-clock."""

    kind: ClassVar[str] = "step"
    step: int
    steps: int
    loss: float | None = None
    similarity: float | None = None
    smoothness: float | None = None
    dice_loss: float | None = None
    learning_rate: float | None = None
    seconds_per_step: float | None = None
    eta_seconds: float | None = None


@_event
class Validation(Event):
    """Validation Dice at ``step``; ``best_dice`` is the best so far (this one included)."""

    kind: ClassVar[str] = "validation"
    step: int
    dice: float | None
    best_dice: float | None = None
    improved: bool = False  # best.pt was just written
    variants: dict | None = None  # Dice per validation variant ("skull-stripped", "whole-head"); ``dice`` is their mean


@_event
class Resumed(Event):
    """Training resumed from ``path`` (a last.pt) at ``step``."""

    kind: ClassVar[str] = "resumed"
    step: int
    path: str = ""
    best_dice: float | None = None


@_event
class Message(Event):
    """A note for the user (``level``: info or warning), e.g. a fall-back from CUDA to the CPU."""

    kind: ClassVar[str] = "message"
    text: str
    level: str = "info"


@_event
class Error(Event):
    """The run failed; ``message`` is what follows ``voxelmorphreg: error:`` on stderr."""

    kind: ClassVar[str] = "error"
    message: str
    exit_code: int = 2


@_event
class Interrupted(Event):
    """The run was stopped (Ctrl-C, a signal, a stop request); nothing of it was committed
    beyond what ``message`` says (training saves last.pt)."""

    kind: ClassVar[str] = "interrupted"
    message: str = "interrupted"
    exit_code: int = 130
    step: int | None = None


@_event
class Done(Event):
    """The run succeeded. ``files``: names of the outputs written into ``out``."""

    kind: ClassVar[str] = "done"
    out: str
    files: list = field(default_factory=list)
    seconds: float | None = None
    summary: dict = field(default_factory=dict)  # register: mean Dice; train: step, best_validation_dice


@_event
class PairStarted(Event):
    """Batch registration: pair ``index`` (1-based) of ``total`` begins."""

    kind: ClassVar[str] = "pair_started"
    name: str
    index: int
    total: int


@_event
class PairDone(Event):
    """Batch registration: pair ``index`` of ``total`` ended with ``status`` (see
    :data:`BATCH_STATUSES`); ``error``: its one-line message; ``summary``: its row of summary.csv."""

    kind: ClassVar[str] = "pair_done"
    name: str
    index: int
    total: int
    status: str
    seconds: float | None = None
    error: str = ""
    out: str = ""
    summary: dict = field(default_factory=dict)


def _plain(value):
    """JSON-safe: non-finite floats become null (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def encode_event(event: Event) -> str:
    """One line (no newline) of strict JSON: ``{"event": kind, ...fields}``."""
    return json.dumps({"event": event.kind, **_plain(asdict(event))}, allow_nan=False, separators=(",", ":"))


def parse_event(line: str) -> Event | None:
    """The event of one channel line, or ``None`` for a line that is not an event.

    Fields this version does not know are ignored, missing optional ones take their defaults, so
    a front end keeps working with a newer engine that adds fields; an unknown kind gives None."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    cls = _EVENT_KINDS.get(data.get("event"))
    if cls is None:
        return None
    known = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in data.items() if k in known})
    except TypeError:  # a required field is missing
        return None


class EventChannel:
    """Where the engine writes its events; :meth:`emit` is thread-safe and flushes every line."""

    def __init__(self, stream=None, close=False):
        self._stream = stream
        self._close = close
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        if self._stream is None:
            return
        line = encode_event(event) + "\n"
        with self._lock:
            try:
                self._stream.write(line)
                self._stream.flush()
            except (OSError, ValueError):  # the reader went away: the run goes on without it
                self._stream = None

    __call__ = emit

    def close(self) -> None:
        if self._stream is not None and self._close:
            try:
                self._stream.close()
            except OSError:
                pass
        self._stream = None


def open_event_channel(destination: str | None) -> EventChannel:
    """``None``: no events; ``"-"``: stdout; ``"fd:N"``: file descriptor N; else a file path (appended).

    Raises ``ValueError`` (with the reason) for a destination that cannot be opened."""
    if destination is None or destination == "":
        return EventChannel()
    if destination == "-":
        return EventChannel(sys.stdout)
    if destination.startswith("fd:"):
        try:
            fd = int(destination[3:])
            return EventChannel(os.fdopen(fd, "w", buffering=1, encoding="utf-8", closefd=False), close=True)
        except (ValueError, OSError) as exc:
            raise ValueError(f"--events {destination}: not an open file descriptor ({exc})") from None
    try:
        return EventChannel(open(destination, "a", buffering=1, encoding="utf-8"), close=True)
    except OSError as exc:
        raise ValueError(f"--events {destination}: cannot open ({exc.strerror or exc})") from None


def no_events(event: Event) -> None:
    """The ``events`` callable of a pipeline that nobody listens to."""
