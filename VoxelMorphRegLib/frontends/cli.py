"""``voxelmorphreg`` command line: register, batch, brain-mask, demo, train, evaluate.

Expected faults end with one line ``voxelmorphreg: error: <what is wrong>`` on stderr and a
non-zero exit code, never a traceback. Progress goes to stderr; ``--quiet`` silences it.
``--events DEST`` (register, train) also writes the run's events as JSON lines for front ends;
the register and train options are those of :mod:`..contract`, which builds this parser's flags.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from ..contract import (BEST_CHECKPOINT, LAST_CHECKPOINT, TRAINING_LOG, Done, Error, Interrupted, RegisterOptions, Stage, Started, TrainOptions,
                        add_arguments, open_event_channel, options_from_args)
from ..errors import CancelledError, VoxelMorphRegError


def _progress(quiet: bool):
    def log(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    return log


def _stop_on_stdin():
    """A ``should_stop`` that turns true when standard input reads ``stop`` or ends.

    Front ends (the Slicer module) start the engine with ``--stop-on-stdin`` and a pipe as its
    standard input: a stop request reaches the engine itself (not a launcher in between, as a
    signal would), and the end of input (the front end has gone) stops it too.
    """
    import threading

    requested = threading.Event()

    def watch():
        try:
            for line in sys.stdin:
                if line.strip().lower() == "stop":
                    break
        except (OSError, ValueError):
            pass
        requested.set()

    threading.Thread(target=watch, name="voxelmorphreg stop watcher", daemon=True).start()
    return requested.is_set


def _add_stop_option(p):
    p.add_argument("--stop-on-stdin", action="store_true", help="stop cleanly when standard input reads 'stop' or ends (for front ends; a training saves last.pt)")


def _add_register(sub):
    p = sub.add_parser("register", help="register MOVING onto FIXED and write the results to --out")
    p.add_argument("fixed", help="fixed (target) volume: NIfTI, NRRD, MHA or a DICOM folder")
    p.add_argument("moving", help="moving volume, brought onto the fixed one")
    p.add_argument("--out", required=True, help="output folder (created if needed)")
    p.add_argument("--moving-labels", help="label map on the moving image's grid, carried into fixed space")
    p.add_argument("--fixed-labels", help="label map on the fixed image's grid, for Dice before/after")
    add_arguments(p, RegisterOptions)  # the settings, defined once in contract.RegisterOptions
    _add_common(p)


def _add_common(p):
    p.add_argument("--events", metavar="DEST", help="also write progress events, one JSON object per line, to DEST: '-' (stdout), 'fd:N' or a file (see docs/COMMAND_LINE.md, Events)")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    _add_stop_option(p)


def _add_demo(sub):
    p = sub.add_parser("demo", help="run the whole pipeline offline on a built-in sample with a known deformation")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--model", default="bundled")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--refine", type=int, default=None, metavar="N", help="refinement iterations (default: the model's own; 0 shows the network alone)")
    p.add_argument("--quiet", action="store_true")


def _add_train(sub):
    p = sub.add_parser("train", help="train or fine-tune a model")
    p.add_argument("--data", required=True, help="folder or CSV (image,labels columns) of training subjects")
    p.add_argument("--atlas", required=True, help="volume whose space defines the model grid; every subject is affinely aligned to it")
    p.add_argument("--out", required=True, help="folder for checkpoints (last.pt, best.pt), log.csv and TensorBoard logs")
    add_arguments(p, TrainOptions)  # the settings, defined once in contract.TrainOptions
    _add_common(p)


def _run_register(args, log, events):
    import threading

    from ..image.io import ensure_output_folder
    from ..image.pair_files import read_pair

    engine = {}

    def import_engine():
        try:
            from ..pipelines import register

            engine["module"] = register
        except BaseException as exc:  # re-raised in the main thread
            engine["error"] = exc

    # torch and MONAI take seconds to import: the images are read (torch-free, ITK releases the GIL) meanwhile.
    importer = threading.Thread(target=import_engine, name="engine import", daemon=True)
    importer.start()
    options = options_from_args(RegisterOptions, args)
    should_stop = _stop_on_stdin() if getattr(args, "stop_on_stdin", False) else (lambda: False)
    log("[  0%] reading the images")
    events(Stage("read", 0, "reading the images"))
    ensure_output_folder(args.out)
    images = read_pair(args.fixed, args.moving, args.moving_labels, args.fixed_labels)
    importer.join()
    if "error" in engine:
        raise engine["error"]
    result = engine["module"].register_files(args.fixed, args.moving, args.out, options, moving_labels=args.moving_labels, fixed_labels=args.fixed_labels, log=log, events=events,
                                             should_stop=should_stop, images=images)  # seconds.total: reading + the rest, not the import
    log(f"done in {result.metrics['seconds']['total']:.1f} s; results in {args.out}")


def _run_demo(args, log, events):
    from ..pipelines.demo import run_demo

    run_demo(args.out, model=args.model, device=args.device, seed=args.seed, log=log, refine=args.refine)


def _run_train(args, log, events):
    import json
    from pathlib import Path

    from ..checkpoint import ModelConfig, load_checkpoint
    from ..tensor.unet import decoder_features_for
    from ..pipelines import train as training

    if args.init:
        _, config, _ = load_checkpoint(args.init)
    elif not 0 <= args.svf_level <= 3:
        raise VoxelMorphRegError(f"--svf-level must be between 0 and 3, got {args.svf_level}")
    else:
        config = ModelConfig(spacing=[args.spacing] * 3, svf_level=args.svf_level, decoder_features=list(decoder_features_for(args.svf_level)))
    for name, value in (("iterations", args.default_refine), ("smoothness", args.default_refine_smoothness), ("learning_rate", args.default_refine_learning_rate), ("coarse_fraction", args.default_refine_coarse_fraction)):
        if value is not None:
            setattr(config, f"default_refine_{name}", value)
    from ..pipelines.register import refinement_settings

    refinement_settings(RegisterOptions(), config, True, "--default-refine options")  # one-line error for a bad value, before any work
    eval_labels = []
    if args.eval_labels:
        try:
            eval_labels = [int(v) for v in json.loads(Path(args.eval_labels).read_text())]
        except (OSError, ValueError, TypeError) as exc:
            raise VoxelMorphRegError(f"{args.eval_labels}: not a JSON list of label IDs ({exc})") from None
    should_stop = _stop_on_stdin() if getattr(args, "stop_on_stdin", False) else (lambda: False)
    cache = Path(args.cache) if args.cache else Path(args.out) / "cache"
    train_sources = training.sources_from(args.data)
    val_sources = training.sources_from(args.val) if args.val else []
    text = f"{len(train_sources)} training and {len(val_sources)} validation subjects; preparing them on the model grid"
    log(text)
    events(Stage("prepare", 0, text))
    train_subjects = training.prepare_all(train_sources, args.atlas, config, cache, args.skull_strip_labels, not args.no_affine, log, events)
    val_subjects = training.prepare_all(val_sources, args.atlas, config, cache, args.skull_strip_labels, not args.no_affine, log, events)
    atlas_subject = None
    if args.pairs == "to-atlas":
        atlas_source = training.SubjectSource("atlas", args.atlas, args.atlas_labels)
        atlas_subject = training.prepare_all([atlas_source], args.atlas, config, cache, False, False, log)[0]
    config.training = {**config.training, "data": args.data, "validation": args.val, "atlas": args.atlas, "pairs": args.pairs}
    options = training.TrainingOptions(
        out=args.out,
        steps=args.steps,
        learning_rate=args.learning_rate,
        similarity=args.similarity,
        lncc_window=args.lncc_window,
        smoothness=args.smoothness,
        smoothness_weight=args.smoothness_weight,
        dice_weight=args.dice_weight,
        similarity_weight=args.similarity_weight,
        synthetic_fraction=args.synthetic_fraction,
        whole_head_fraction=args.whole_head_fraction,
        t1_fraction=args.t1_fraction,
        precision=args.precision,
        augment_displacement_mm=args.augment_mm,
        validate_every=args.validate_every,
        workers=args.workers,
        seed=args.seed,
        device=args.device,
        skull_strip_labels=args.skull_strip_labels,
        eval_labels=eval_labels,
        command="voxelmorphreg " + " ".join(shlex.quote(a) for a in args.argv),
    )
    events(Stage("train", 0, f"training for {args.steps} steps"))
    if should_stop():  # asked to stop while the subjects were prepared: nothing trained yet, nothing to save
        raise CancelledError("training stopped before its first step")
    summary = training.train(options, train_subjects, val_subjects, config, log=log, should_stop=should_stop, init=args.init, atlas=atlas_subject, events=events)
    log(f"finished at step {summary['step']}; best validation Dice {summary['best_validation_dice']:.4f}; best model: {args.out}/{BEST_CHECKPOINT}")
    events(Done(str(args.out), [name for name in (BEST_CHECKPOINT, LAST_CHECKPOINT, TRAINING_LOG) if (Path(args.out) / name).is_file()], None,
                {"step": summary["step"], "best_validation_dice": summary["best_validation_dice"]}))


def _add_batch(sub):
    from .batch_command import add_parser

    add_parser(sub, _add_common)


def _run_batch(args, log, events):
    from .batch_command import run

    run(args, log, events, _stop_on_stdin() if getattr(args, "stop_on_stdin", False) else (lambda: False))


def _add_brain_mask(sub):
    from .brain_mask_command import add_parser

    add_parser(sub, _add_common)


def _run_brain_mask(args, log, events):
    from .brain_mask_command import run

    run(args, log, events)


def _run_evaluate(args, log, events):
    from ..pipelines.evaluate import run

    run(args, log)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxelmorphreg", description="Learned deformable registration of 3D brain MRI (VoxelMorph, diffeomorphic).")
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"voxelmorphreg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_register(sub)
    _add_demo(sub)
    _add_train(sub)
    _add_batch(sub)
    _add_brain_mask(sub)
    from ..pipelines.evaluate import add_parser as add_evaluate

    add_evaluate(sub)
    return parser


def main(argv=None) -> int:
    from . import signals

    previous_handlers = signals.install()  # SIGTERM and SIGHUP end a run as Ctrl-C does (frontends/signals.py)
    try:
        return _main(argv)
    finally:
        signals.restore(previous_handlers)


def _main(argv) -> int:
    from .signals import interruption

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    log = _progress(getattr(args, "quiet", False))
    try:
        channel = open_event_channel(getattr(args, "events", None))
    except ValueError as exc:
        print(f"voxelmorphreg: error: {exc}", file=sys.stderr)
        return 2
    from .. import __version__

    channel.emit(Started(args.command, __version__, pid=os.getpid()))
    runners = {"register": _run_register, "demo": _run_demo, "train": _run_train, "evaluate": _run_evaluate, "batch": _run_batch, "brain-mask": _run_brain_mask}
    try:
        runners[args.command](args, log, channel.emit)
    except VoxelMorphRegError as exc:
        print(f"voxelmorphreg: error: {exc}", file=sys.stderr)
        channel.emit(Error(str(exc), exc.exit_code))
        return exc.exit_code
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP
        message, code = interruption(exc)
        print(f"voxelmorphreg: {message}", file=sys.stderr)
        channel.emit(Interrupted(message, code))
        return code
    except (MemoryError, RuntimeError) as exc:  # a failed allocation in ITK or PyTorch; any other RuntimeError is a bug
        from ..pipelines.memory_guard import allocation_failure

        message = allocation_failure(exc)
        if message is None:
            raise
        print(f"voxelmorphreg: error: {message}", file=sys.stderr)
        channel.emit(Error(message, 2))
        return 2
    finally:
        channel.close()
    return 0


def run_and_exit(argv=None) -> None:
    """``main``, then end the process at once (``os._exit``) after a register or batch run: every
    output is committed, the event channel closed and the streams flushed by then, and the
    interpreter's teardown of torch, MONAI and ITK (1.5-3 s on a 2-core CPU) is time a front end
    waiting for the process would lose. Other commands exit normally."""
    argv = list(sys.argv[1:] if argv is None else argv)
    code = main(argv)
    if argv and argv[0] in ("register", "batch"):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run_and_exit()
