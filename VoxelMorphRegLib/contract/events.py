"""What the engine and its front ends agree on, defined once: file names, events, options.

Torch-free and Qt-free: the Slicer module, the MRML bridge and the command line all import it.

How a front end uses it
-----------------------
1. Build the options and turn them into a command line::

       job = RegisterJob(fixed, moving, out, options=RegisterOptions(refine_iterations=50))
       argv = prefix + command_line(job, events="-")   # prefix: [python, "-m", "VoxelMorphRegLib.frontends.cli"]

   ``command_line`` is the only place that spells the engine's flags; the engine's own argparse
   parser is built from the same dataclass fields (:func:`add_arguments`) and read back with
   :func:`options_from_args`, so the two cannot drift apart. ``None`` always means "unset: the
   engine's (or the model's) default", and an unset option is left off the command line.
2. Read the engine's events: with ``--events -`` the engine writes one JSON object per line on
   stdout (human-readable ``[ NN%] stage`` lines stay on stderr for people); ``--events PATH``
   appends them to a file, ``--events fd:N`` writes them to an inherited file descriptor (POSIX).
   :func:`parse_event` turns a line into an event dataclass, or ``None`` for anything that is
   not an event (a human line, a library's warning), so reading a merged stdout+stderr stream
   works too: every event is written with one ``write`` of one line.
3. Find the outputs by the names below (:data:`REGISTER_OUTPUTS`, :data:`LAST_CHECKPOINT`...).

The engine emits through an :class:`EventChannel` (:func:`open_event_channel`); pipelines take a
plain callable ``events(event)`` so that they do not care where the events go.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Callable, ClassVar

# --------------------------------------------------------------------------- file names

WARPED = "warped.nii.gz"
WARPED_LABELS = "warped_labels.nii.gz"
DISPLACEMENT = "displacement.nii.gz"  # fixed -> moving, on the fixed grid, LPS mm
INVERSE_DISPLACEMENT = "inverse_displacement.nii.gz"  # moving -> fixed, on the moving grid
JACOBIAN = "jacobian.nii.gz"
METRICS = "metrics.json"
QC_FIGURE = "qc.png"
# Every file a register run may write into --out; metrics.json is written last.
REGISTER_IMAGES = (WARPED, WARPED_LABELS, DISPLACEMENT, INVERSE_DISPLACEMENT, JACOBIAN)
REGISTER_OUTPUTS = REGISTER_IMAGES + (QC_FIGURE, METRICS)


def output_name(name: str, compressed: bool = True) -> str:
    """The file name of the output ``name`` (spelled as above) in the format a run writes:
    ``warped.nii.gz``, or ``warped.nii`` with ``RegisterOptions.compress=False`` (``--uncompressed``)."""
    return name if compressed or not name.endswith(".nii.gz") else name[: -len(".gz")]


# Every name a register run may write, in both formats (a re-run in the other format replaces them).
REGISTER_OUTPUT_NAMES = REGISTER_OUTPUTS + tuple(output_name(name, False) for name in REGISTER_IMAGES)
# Batch registration (``voxelmorphreg batch``): the summary in --out, one row per pair of the input CSV.
BATCH_SUMMARY = "summary.csv"
BATCH_SUMMARY_COLUMNS = ("name", "status", "seconds", "error", "mean_dice_before", "mean_dice_after", "folding_fraction", "out")
BATCH_STATUSES = ("ok", "failed", "interrupted", "skipped", "pending")

LAST_CHECKPOINT = "last.pt"  # written every few steps and on a stop; the same command resumes from it
BEST_CHECKPOINT = "best.pt"  # best validation Dice (the last model without a validation set)
TRAINING_LOG = "log.csv"
# Columns of log.csv, in order; validation_dice is empty on steps without validation.
TRAINING_LOG_COLUMNS = ("step", "kind", "loss", "similarity", "smoothness", "dice_loss", "learning_rate", "seconds_per_step",
                        "validation_dice", "validation_dice_skull_stripped", "validation_dice_whole_head")

# --------------------------------------------------------------------------- events

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


# --------------------------------------------------------------------------- options


def option(flag: str, help: str, default=None, *, kind=None, choices=None, metavar=None, negates: bool = False, repeat: bool = False, default_factory=MISSING):
    """A dataclass field that is also a command-line flag.

    ``kind``: int, float or str (the type argparse converts to); booleans are switches: present
    means True, or False with ``negates`` (``--no-affine`` sets ``affine=False``)."""
    metadata = {"flag": flag, "help": help, "kind": kind, "choices": choices, "metavar": metavar, "negates": negates}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _number(value) -> str:
    return repr(float(value))  # round-trips exactly through float()


def _flag_arguments(options) -> list:
    argv = []
    for f in fields(options):
        meta = f.metadata
        if "flag" not in meta:
            continue
        value = getattr(options, f.name)
        if value is None:
            continue  # unset: the engine decides
        if f.type in ("bool", bool):
            if bool(value) != f.default:  # a switch: present means the other value than the default
                argv.append(meta["flag"])
            continue
        kind = meta["kind"]
        text = _number(value) if kind is float else str(int(value)) if kind is int else str(value)
        argv += [meta["flag"], text]
    return argv


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")  # what argparse itself would name it: --no-affine -> no_affine


def add_arguments(parser, options_class) -> None:
    """Add the flags of ``options_class`` (a dataclass of :func:`option` fields) to ``parser``.

    The namespace holds each flag under argparse's own name (``--no-affine`` -> ``no_affine``,
    ``--refine`` -> ``refine``); :func:`options_from_args` turns it into the dataclass."""
    for f in fields(options_class):
        meta = f.metadata
        if "flag" not in meta:
            continue
        if f.type in ("bool", bool):
            parser.add_argument(meta["flag"], action="store_true", help=meta["help"])
            continue
        default = f.default if f.default is not MISSING else f.default_factory()
        extra = {k: meta[k] for k in ("choices", "metavar") if meta[k] is not None}
        parser.add_argument(meta["flag"], type=meta["kind"] or str, default=default, help=meta["help"], **extra)


def options_from_args(options_class, args):
    """The ``options_class`` instance an argparse namespace of :func:`add_arguments` holds."""
    values = {}
    for f in fields(options_class):
        meta = f.metadata
        if "flag" not in meta:
            continue
        value = getattr(args, _dest(meta["flag"]))
        values[f.name] = (not value if meta["negates"] else bool(value)) if f.type in ("bool", bool) else value
    return options_class(**values)


DEVICES = ("auto", "cpu", "cuda")


@dataclass
class RegisterOptions:
    """Settings of ``voxelmorphreg register`` (and of :func:`pipelines.register.register_images`)."""

    model: str = option("--model", "model file, 'bundled' (default) or 'none' (optimisation only)", "bundled")
    device: str = option("--device", "device to run on", "auto", choices=DEVICES)
    affine: bool = option("--no-affine", "skip the affine pre-alignment (images already aligned)", True, negates=True)
    refine_iterations: int | None = option("--refine", "N iterations of per-pair refinement (default: the model's own default, 10 for the bundled v2 model; 120 with --model none, the first two thirds on the coarse grid; 0 for the network alone)", kind=int, metavar="N")
    refine_smoothness: float | None = option("--refine-smoothness", "weight of velocity smoothness in the refinement loss (default: the model's; larger is smoother)", kind=float, metavar="W")
    refine_learning_rate: float | None = option("--refine-learning-rate", "Adam step size of the refinement (default: the model's)", kind=float, metavar="LR")
    refine_coarse_fraction: float | None = option("--refine-coarse-fraction", "share of the --refine iterations run first on the velocity's coarser grid, where each costs several times less (default: the model's)", kind=float, metavar="F")
    integration_steps: int | None = option("--integration-steps", "scaling-and-squaring steps (default: the model's)", kind=int, metavar="N")
    qc: bool = option("--no-qc", "do not draw qc.png", True, negates=True)
    inverse: bool = option("--no-inverse", "do not compute or write inverse_displacement", True, negates=True)
    jacobian: bool = option("--no-jacobian", "do not write jacobian (metrics.json still has the folding statistics)", True, negates=True)
    compress: bool = option("--uncompressed", "write the images as uncompressed .nii (warped.nii ...): larger, faster to write and read back", True, negates=True)


@dataclass
class RegisterJob:
    """One ``register`` run: the files and the settings."""

    fixed: str
    moving: str
    out: str
    moving_labels: str | None = None
    fixed_labels: str | None = None
    options: RegisterOptions = field(default_factory=RegisterOptions)


@dataclass
class TrainOptions:
    """Settings of ``voxelmorphreg train`` beyond ``--data``, ``--atlas`` and ``--out``."""

    val: str | None = option("--val", "folder or CSV of labelled validation subjects (Dice picks the best checkpoint)")
    init: str | None = option("--init", "start from this model's weights (fine-tuning)")
    pairs: str = option("--pairs", "random pairs between subjects, or every subject registered to --atlas", "random", choices=("random", "to-atlas"))
    atlas_labels: str | None = option("--atlas-labels", "label map of --atlas (for the Dice loss with --pairs to-atlas)")
    steps: int = option("--steps", "training steps", 2000, kind=int)
    learning_rate: float = option("--learning-rate", "Adam learning rate", 3e-4, kind=float)
    similarity: str = option("--similarity", "image similarity term", "lncc", choices=("lncc", "mse"))
    lncc_window: int = option("--lncc-window", "LNCC window, voxels", 7, kind=int)
    smoothness: str = option("--smoothness", "velocity smoothness term", "gradient", choices=("gradient", "bending"))
    smoothness_weight: float = option("--smoothness-weight", "weight of the smoothness term", 1.0, kind=float)
    dice_weight: float = option("--dice-weight", "weight of the Dice term (pairs with labels on both sides)", 1.0, kind=float)
    similarity_weight: float = option("--similarity-weight", "weight of the image similarity (pairs of two real images only)", 1.0, kind=float)
    synthetic_fraction: float = option("--synthetic-fraction", "share of synthetic (label-map) pairs when there are real pairs too", 0.7, kind=float)
    whole_head_fraction: float = option("--whole-head-fraction", "share of synthetic pairs rendered with the extra-cerebral labels kept", 0.5, kind=float)
    t1_fraction: float = option("--t1-fraction", "share of synthetic pairs with a T1-like contrast (the rest: random contrast)", 0.5, kind=float)
    precision: str = option("--precision", "convolutions in bf16 or fp32 (auto: bf16 where the device has fast bf16)", "auto", choices=("auto", "bf16", "fp32"))
    augment_mm: float = option("--augment-mm", "largest random displacement of the augmentation, mm", 6.0, kind=float)
    spacing: float = option("--spacing", "model grid spacing, mm", 2.0, kind=float)
    svf_level: int = option("--svf-level", "velocity field at input resolution / 2**level", 1, kind=int)
    validate_every: int = option("--validate-every", "steps between validations", 100, kind=int)
    default_refine: int | None = option("--default-refine", "refinement iterations `register` runs with the trained model by default (stored in its config; default: the --init model's, else 0)", kind=int, metavar="N")
    default_refine_smoothness: float | None = option("--default-refine-smoothness", "the trained model's default refinement smoothness weight (default: the --init model's, else 1.0)", kind=float, metavar="W")
    default_refine_learning_rate: float | None = option("--default-refine-learning-rate", "the trained model's default refinement step size (default: the --init model's, else 0.1)", kind=float, metavar="LR")
    default_refine_coarse_fraction: float | None = option("--default-refine-coarse-fraction", "the trained model's default share of refinement iterations on the coarse grid (default: the --init model's, else 0)", kind=float, metavar="F")
    skull_strip_labels: bool = option("--skull-strip-labels", "set non-brain labels of whole-head label maps to background", False)
    eval_labels: str | None = option("--eval-labels", "JSON list of label IDs to average Dice over (e.g. labels30.json)")
    cache: str | None = option("--cache", "folder caching subjects on the model grid")
    workers: int = option("--workers", "DataLoader worker processes for synthesis and augmentation", 0, kind=int)
    affine: bool = option("--no-affine", "do not align the subjects affinely to --atlas", True, negates=True)
    device: str = option("--device", "device to train on", "auto", choices=DEVICES)
    seed: int = option("--seed", "random seed", 0, kind=int)


@dataclass
class TrainJob:
    """One ``train`` run."""

    data: str
    atlas: str
    out: str
    options: TrainOptions = field(default_factory=TrainOptions)


def command_line(job, events: str | None = None, quiet: bool = False) -> list:
    """The engine's arguments for ``job`` (a :class:`RegisterJob` or :class:`TrainJob`), without
    the program: ``["register", FIXED, MOVING, "--out", OUT, ...]``. ``events``: the
    ``--events`` destination (``"-"``: stdout)."""
    if isinstance(job, RegisterJob):
        argv = ["register", str(job.fixed), str(job.moving), "--out", str(job.out)]
        if job.moving_labels:
            argv += ["--moving-labels", str(job.moving_labels)]
        if job.fixed_labels:
            argv += ["--fixed-labels", str(job.fixed_labels)]
    elif isinstance(job, TrainJob):
        argv = ["train", "--data", str(job.data), "--atlas", str(job.atlas), "--out", str(job.out)]
    else:
        raise TypeError(f"not a job: {job!r}")
    argv += _flag_arguments(job.options)
    if events is not None:
        argv += ["--events", str(events)]
    if quiet:
        argv.append("--quiet")
    return argv
