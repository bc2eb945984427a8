"""The engine's options, defined once: dataclasses whose fields are also the command line's flags.

:func:`command_line` is the only place that spells the flags for a front end; the engine's own
argparse parser is built from the same fields (:func:`add_arguments`) and read back with
:func:`options_from_args`, so the two cannot drift apart. ``None`` means "unset: the engine's (or
the model's) default", and an unset option is left off the command line.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields


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
    brain_mask: str = option("--brain-mask", "auto: mask both scans' brains (a scan that is already skull-stripped keeps its own foreground) and register the brains; off: register the images as they are", "auto", choices=("auto", "off"))
    contrast: str = option("--contrast", "auto: tell from the images whether fixed and moving have the same contrast; with two contrasts (T2 onto T1...) the network is skipped and the refinement runs alone from zero (--model none's schedule); same / different: decide without looking", "auto", choices=("auto", "same", "different"))
    brain_mask_model: str | None = option("--brain-mask-model", "brain extraction model file (default: the bundled one)", metavar="FILE")


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
