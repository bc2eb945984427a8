"""Make a bundled model file from a training checkpoint: the weights only (no optimiser state) and
the config with the default refinement chosen on the model card.

    python training/make_bundle.py training/v2/run/best.pt Resources/Models/voxelmorphreg_v2.pt \
        --refine 10 --coarse-fraction 0 --smoothness 0.3 --learning-rate 0.2 --symmetric

The weights are copied bit for bit; ``training`` in the config keeps the run's provenance (steps,
validation Dice, command) and gains ``bundled_from`` (the checkpoint's file name and step).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    from VoxelMorphRegLib.checkpoint import load_checkpoint, save_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--refine", type=int, required=True, help="default_refine_iterations")
    parser.add_argument("--coarse-fraction", type=float, required=True, help="default_refine_coarse_fraction")
    parser.add_argument("--smoothness", type=float, required=True, help="default_refine_smoothness")
    parser.add_argument("--learning-rate", type=float, required=True, help="default_refine_learning_rate")
    parser.add_argument("--symmetric", action="store_true", help="symmetric_inference: run the network both ways, keep the antisymmetric velocity")
    args = parser.parse_args(argv)

    network, config, _payload = load_checkpoint(args.checkpoint)
    training = dict(config.training)
    training["bundled_from"] = {"file": Path(args.checkpoint).name, "step": training.get("best_step", training.get("steps"))}
    config = dataclasses.replace(
        config,
        default_refine_iterations=args.refine,
        default_refine_coarse_fraction=args.coarse_fraction,
        default_refine_smoothness=args.smoothness,
        default_refine_learning_rate=args.learning_rate,
        symmetric_inference=args.symmetric,
        training=training,
    )
    path = save_checkpoint(args.out, network, config)
    print(f"wrote {path} (step {training['bundled_from']['step']}, refine {args.refine}, coarse fraction {args.coarse_fraction}, smoothness {args.smoothness}, step size {args.learning_rate}, symmetric inference {'on' if args.symmetric else 'off'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
