#!/usr/bin/env bash
# Trains (or resumes, from run/last.pt) the bundled brain extraction network. Run from the repository root.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec nice -n 10 python -m VoxelMorphRegLib.pipelines.brain_mask_training \
  --maps ../shared/data/label_maps --out training/brainmask/run --cache work_cache/brainmask \
  --steps 2000 --batch 2 --learning-rate 2e-3 --validate-every 200 --checkpoint-minutes 5 --threads 1 "$@"
