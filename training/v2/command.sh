#!/usr/bin/env bash
# The exact command of the v2 training run. Run from anywhere; it resumes from run/last.pt when present.
# ../shared/data must sit beside the repository (see ../../README.md, "Training recipe").
set -euo pipefail
cd "$(dirname "$0")"
exec nice -n 10 ../../.venv/bin/voxelmorphreg train \
  --data train.csv --val val.csv \
  --atlas ../../../shared/data/unlabeled/conditional_lapirn_image_A_fullsize.nii.gz \
  --eval-labels ../../../shared/data/aseg/labels30.json \
  --out run --cache ../../work_cache/v2 \
  --steps 20000 --validate-every 250 --workers 0 --seed 0
