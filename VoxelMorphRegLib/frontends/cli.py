"""``voxelmorphreg`` command line: register, demo, train, evaluate.

Expected faults end with one line ``voxelmorphreg: error: <what is wrong>`` on stderr and a
non-zero exit code, never a traceback. Progress goes to stderr; ``--quiet`` silences it.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from ..errors import VoxelMorphRegError


def _progress(quiet: bool):
    def log(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    return log


def _add_register(sub):
    p = sub.add_parser("register", help="register MOVING onto FIXED and write the results to --out")
    p.add_argument("fixed", help="fixed (target) volume: NIfTI, NRRD, MHA or a DICOM folder")
    p.add_argument("moving", help="moving volume, brought onto the fixed one")
    p.add_argument("--out", required=True, help="output folder (created if needed)")
    p.add_argument("--moving-labels", help="label map on the moving image's grid, carried into fixed space")
    p.add_argument("--fixed-labels", help="label map on the fixed image's grid, for Dice before/after")
    p.add_argument("--model", default="bundled", help="model file, 'bundled' (default) or 'none' (optimisation only)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-affine", action="store_true", help="skip the affine pre-alignment (images already aligned)")
    p.add_argument("--refine", type=int, default=None, metavar="N", help="N iterations of per-pair refinement (default: the model's own default, 200 for the bundled model; 200 with --model none; 0 for the network alone)")
    p.add_argument("--refine-smoothness", type=float, default=None, metavar="W", help="weight of velocity smoothness in the refinement loss (default: the model's; larger is smoother)")
    p.add_argument("--refine-learning-rate", type=float, default=None, metavar="LR", help="Adam step size of the refinement (default: the model's)")
    p.add_argument("--integration-steps", type=int, default=None, metavar="N", help="scaling-and-squaring steps (default: the model's)")
    p.add_argument("--no-qc", action="store_true", help="do not draw qc.png")
    p.add_argument("--quiet", action="store_true", help="no progress messages")


def _add_demo(sub):
    p = sub.add_parser("demo", help="run the whole pipeline offline on a built-in sample with a known deformation")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--model", default="bundled")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")


def _add_train(sub):
    p = sub.add_parser("train", help="train or fine-tune a model")
    p.add_argument("--data", required=True, help="folder or CSV (image,labels columns) of training subjects")
    p.add_argument("--val", help="folder or CSV of labelled validation subjects (Dice picks the best checkpoint)")
    p.add_argument("--atlas", required=True, help="volume whose space defines the model grid; every subject is affinely aligned to it")
    p.add_argument("--out", required=True, help="folder for checkpoints (last.pt, best.pt), log.csv and TensorBoard logs")
    p.add_argument("--init", help="start from this model's weights (fine-tuning)")
    p.add_argument("--pairs", choices=["random", "to-atlas"], default="random", help="random pairs between subjects, or every subject registered to --atlas")
    p.add_argument("--atlas-labels", help="label map of --atlas (for the Dice loss with --pairs to-atlas)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--learning-rate", type=float, default=3e-4)
    p.add_argument("--similarity", choices=["lncc", "mse"], default="lncc")
    p.add_argument("--lncc-window", type=int, default=7)
    p.add_argument("--smoothness", choices=["gradient", "bending"], default="gradient")
    p.add_argument("--smoothness-weight", type=float, default=1.0)
    p.add_argument("--dice-weight", type=float, default=1.0)
    p.add_argument("--augment-mm", type=float, default=6.0, help="largest random displacement of the augmentation, mm")
    p.add_argument("--spacing", type=float, default=2.0, help="model grid spacing, mm")
    p.add_argument("--svf-level", type=int, default=1, help="velocity field at input resolution / 2**level")
    p.add_argument("--validate-every", type=int, default=100)
    p.add_argument("--default-refine", type=int, default=None, metavar="N", help="refinement iterations `register` runs with the trained model by default (stored in its config; default: the --init model's, else 0)")
    p.add_argument("--default-refine-smoothness", type=float, default=None, metavar="W", help="the trained model's default refinement smoothness weight (default: the --init model's, else 1.0)")
    p.add_argument("--default-refine-learning-rate", type=float, default=None, metavar="LR", help="the trained model's default refinement step size (default: the --init model's, else 0.1)")
    p.add_argument("--skull-strip-labels", action="store_true", help="set non-brain labels of whole-head label maps to background")
    p.add_argument("--eval-labels", help="JSON list of label IDs to average Dice over (e.g. labels30.json)")
    p.add_argument("--cache", help="folder caching subjects on the model grid")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for synthesis and augmentation")
    p.add_argument("--no-affine", action="store_true")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")


def _run_register(args, log):
    from ..pipelines.register import RegisterOptions, register_files

    options = RegisterOptions(
        model=args.model,
        device=args.device,
        affine=not args.no_affine,
        refine_iterations=args.refine,
        refine_smoothness=args.refine_smoothness,
        refine_learning_rate=args.refine_learning_rate,
        integration_steps=args.integration_steps,
        qc=not args.no_qc,
    )
    result = register_files(args.fixed, args.moving, args.out, options, moving_labels=args.moving_labels, fixed_labels=args.fixed_labels, log=log)
    log(f"done in {result.metrics['seconds']['total']:.1f} s; results in {args.out}")


def _run_demo(args, log):
    from ..pipelines.demo import run_demo

    run_demo(args.out, model=args.model, device=args.device, seed=args.seed, log=log)


def _run_train(args, log):
    import json
    from pathlib import Path

    from ..checkpoint import ModelConfig, load_checkpoint
    from ..pipelines import train as training

    if args.init:
        _, config, _ = load_checkpoint(args.init)
    elif not 0 <= args.svf_level <= 3:
        raise VoxelMorphRegError(f"--svf-level must be between 0 and 3, got {args.svf_level}")
    else:
        config = ModelConfig(spacing=[args.spacing] * 3, svf_level=args.svf_level, decoder_features=[32, 32, 32, 16][: 4 - args.svf_level])
    for name, value in (("iterations", args.default_refine), ("smoothness", args.default_refine_smoothness), ("learning_rate", args.default_refine_learning_rate)):
        if value is not None:
            setattr(config, f"default_refine_{name}", value)
    from ..pipelines.register import RegisterOptions, refinement_settings

    refinement_settings(RegisterOptions(), config, True, "--default-refine options")  # one-line error for a bad value, before any work
    eval_labels = []
    if args.eval_labels:
        try:
            eval_labels = [int(v) for v in json.loads(Path(args.eval_labels).read_text())]
        except (OSError, ValueError, TypeError) as exc:
            raise VoxelMorphRegError(f"{args.eval_labels}: not a JSON list of label IDs ({exc})") from None
    cache = Path(args.cache) if args.cache else Path(args.out) / "cache"
    train_sources = training.sources_from(args.data)
    val_sources = training.sources_from(args.val) if args.val else []
    log(f"{len(train_sources)} training and {len(val_sources)} validation subjects; preparing them on the model grid")
    train_subjects = training.prepare_all(train_sources, args.atlas, config, cache, args.skull_strip_labels, not args.no_affine, log)
    val_subjects = training.prepare_all(val_sources, args.atlas, config, cache, args.skull_strip_labels, not args.no_affine, log)
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
        augment_displacement_mm=args.augment_mm,
        validate_every=args.validate_every,
        workers=args.workers,
        seed=args.seed,
        device=args.device,
        skull_strip_labels=args.skull_strip_labels,
        eval_labels=eval_labels,
        command="voxelmorphreg " + " ".join(shlex.quote(a) for a in args.argv),
    )
    summary = training.train(options, train_subjects, val_subjects, config, log=log, init=args.init, atlas=atlas_subject)
    log(f"finished at step {summary['step']}; best validation Dice {summary['best_validation_dice']:.4f}; best model: {args.out}/best.pt")


def _run_evaluate(args, log):
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
    from ..pipelines.evaluate import add_parser as add_evaluate

    add_evaluate(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    log = _progress(getattr(args, "quiet", False))
    runners = {"register": _run_register, "demo": _run_demo, "train": _run_train, "evaluate": _run_evaluate}
    try:
        runners[args.command](args, log)
    except VoxelMorphRegError as exc:
        print(f"voxelmorphreg: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("voxelmorphreg: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("voxelmorphreg: error: out of memory; try a smaller volume or --device cpu on a machine with more memory", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
