"""Bundle a brain extraction checkpoint: weights and config only (no optimiser), with its provenance.

    python training/make_brainmask_bundle.py training/brainmask/run/best.pt Resources/Models/voxelmorphreg_brainmask_v1.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from VoxelMorphRegLib.brain_mask_model import load_brain_mask_model, save_brain_mask_model  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    args = parser.parse_args(argv)
    network, config, payload = load_brain_mask_model(args.checkpoint)
    config.training = {**config.training, "bundled_from": f"{Path(args.checkpoint).as_posix()} (step {payload.get('step')}, validation Dice {payload.get('best', float('nan')):.4f})"}
    save_brain_mask_model(args.out, network, config)
    print(f"wrote {args.out} from step {payload.get('step')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
