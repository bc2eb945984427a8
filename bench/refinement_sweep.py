"""Dice against refinement schedule: the trade-off curve behind a model's default refinement.

    python bench/refinement_sweep.py --model training/v2/run/best.pt \
        --schedules 0+0,20+0,40+0,20+10,40+10,40+20,80+40 [--json out.json]

Every ordered pair of ``../shared/data/aseg`` (6 pairs of subj01..03) is prepared once (affine,
model grid) and run through the network once; each schedule ``C+F`` (C iterations on the coarse
velocity grid, then F on the model grid; the smoothness weight and step size of ``--refine-*``,
else the model's) then refines that same velocity and goes through the rest of ``register``
(field composition, warping; no inverse field). Printed per schedule: Dice30 (mean over the 30
labels of labels30.json, on the fixed grid) per pair and on average, the lowest pair, folded
voxels, and the refinement's seconds (median over the pairs). With ``--ants`` ANTs SyN runs on
the same pairs in the same process, the anchor the default must beat on every pair.

Seconds are only comparable within one quiet run (nothing else on the CPU; pause a training).
Needs ``../shared/data`` beside the repository; exits 0 with a message without it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "aseg"


def parse_schedules(text: str) -> list[tuple[int, int]]:
    schedules = []
    for item in text.split(","):
        coarse, _, fine = item.strip().partition("+")
        schedules.append((int(coarse), int(fine or 0)))
    return schedules


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--schedules", default="0+0,20+0,40+0,20+10,40+10,40+20,80+40", help="comma-separated C+F (coarse + model-grid iterations)")
    parser.add_argument("--refine-smoothness", type=float)
    parser.add_argument("--refine-learning-rate", type=float)
    parser.add_argument("--ants", action="store_true", help="ANTs SyN on the same pairs (antspyx)")
    parser.add_argument("--max-pairs", type=int)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"no {DATA}: nothing to measure")
        return 0

    import numpy as np
    import SimpleITK as sitk
    import torch

    from VoxelMorphRegLib.contract import RegisterOptions
    from VoxelMorphRegLib.pipelines.label_metrics import dice_per_label
    from VoxelMorphRegLib.pipelines.loaded_model import load_model
    from VoxelMorphRegLib.pipelines.register import prepare_pair, register_images

    labels = json.loads((DATA / "labels30.json").read_text())
    subjects = {name: (sitk.ReadImage(str(DATA / f"{name}_norm.nii.gz"), sitk.sitkFloat32), sitk.ReadImage(str(DATA / f"{name}_seg.nii.gz")))
                for name in ("subj01", "subj02", "subj03")}
    pairs = [(f, m) for f in subjects for m in subjects if f != m][: args.max_pairs]
    schedules = parse_schedules(args.schedules)
    base = RegisterOptions(model=args.model, refine_iterations=0, inverse=False, qc=False)
    model = load_model(base)
    quiet = lambda message: None  # noqa: E731

    def dice30(warped_labels, fixed_labels) -> float:
        scores = dice_per_label(sitk.GetArrayViewFromImage(warped_labels), sitk.GetArrayViewFromImage(fixed_labels), labels)
        return float(np.mean(list(scores.values())))

    rows = {f"{c}+{f}": [] for c, f in schedules}
    ants_rows = []
    for fixed_name, moving_name in pairs:
        (fixed, fixed_labels), (moving, moving_labels) = subjects[fixed_name], subjects[moving_name]
        prepared = prepare_pair(fixed, moving, base, model, quiet)
        with torch.inference_mode():
            velocity = model.module().velocity(prepared.moving_t.to(model.device), prepared.fixed_t.to(model.device))
        for coarse, fine in schedules:
            total = coarse + fine
            options = RegisterOptions(model=args.model, refine_iterations=total, refine_coarse_fraction=(coarse / total) if total else 0.0,
                                      refine_smoothness=args.refine_smoothness, refine_learning_rate=args.refine_learning_rate, inverse=False, qc=False)
            result = register_images(fixed, moving, options, moving_labels, None, quiet, model=model.with_options(options), prepared=prepared, velocity=velocity)
            row = {"pair": f"{moving_name}_to_{fixed_name}", "dice30": round(dice30(result.warped_labels, fixed_labels), 4),
                   "folding_percent": round(100 * result.metrics["folding_fraction"], 5), "refine_s": result.metrics["seconds"].get("refine", 0.0)}
            rows[f"{coarse}+{fine}"].append(row)
            print(f"{row['pair']}  {coarse:3d}+{fine:<3d}  Dice30 {row['dice30']:.4f}  folded {row['folding_percent']:.4f}%  refine {row['refine_s']:.1f} s", flush=True)
        if args.ants:
            from types import SimpleNamespace

            from VoxelMorphRegLib.pipelines.evaluation_methods import import_ants, run_ants

            ants, why = import_ants()
            if ants is None:
                raise SystemExit(why)
            context = {"ants": ants}
            started = time.perf_counter()
            warped_labels, _ = run_ants(SimpleNamespace(name=fixed_name, image=fixed, labels=fixed_labels), SimpleNamespace(name=moving_name, image=moving, labels=moving_labels), context)
            seconds = time.perf_counter() - started
            ants_rows.append({"pair": f"{moving_name}_to_{fixed_name}", "dice30": round(dice30(warped_labels, fixed_labels), 4), "seconds": round(seconds, 1)})
            print(f"{ants_rows[-1]['pair']}  ANTs SyN  Dice30 {ants_rows[-1]['dice30']:.4f}  {seconds:.1f} s", flush=True)

    print(f"\nmodel: {model.description}; smoothness {model.with_options(RegisterOptions(refine_iterations=1, refine_smoothness=args.refine_smoothness)).refinement['smoothness']}, "
          f"step {model.with_options(RegisterOptions(refine_iterations=1, refine_learning_rate=args.refine_learning_rate)).refinement['learning_rate']}")
    print(f"{'schedule':>9}  {'mean Dice30':>11}  {'lowest pair':>11}  {'folded %':>9}  {'refine s (median)':>17}  per pair")
    summary = {}
    for name, items in rows.items():
        dice = [r["dice30"] for r in items]
        summary[name] = {"mean_dice30": round(statistics.mean(dice), 4), "min_dice30": min(dice), "folding_percent": round(statistics.mean(r["folding_percent"] for r in items), 5),
                         "refine_s_median": round(statistics.median(r["refine_s"] for r in items), 2), "pairs": items}
        s = summary[name]
        print(f"{name:>9}  {s['mean_dice30']:11.4f}  {s['min_dice30']:11.4f}  {s['folding_percent']:9.4f}  {s['refine_s_median']:17.2f}  " + " ".join(f"{d:.3f}" for d in dice))
    if ants_rows:
        dice = [r["dice30"] for r in ants_rows]
        print(f"{'ANTs SyN':>9}  {statistics.mean(dice):11.4f}  {min(dice):11.4f}  {'':9}  {statistics.median(r['seconds'] for r in ants_rows):17.2f}  " + " ".join(f"{d:.3f}" for d in dice))
        for name, s in summary.items():
            s["above_ants_every_pair"] = all(r["dice30"] > a["dice30"] for r, a in zip(s["pairs"], ants_rows))
        print("above ANTs on every pair: " + ", ".join(name for name, s in summary.items() if s["above_ants_every_pair"]))
    if args.json:
        Path(args.json).write_text(json.dumps({"model": model.description, "schedules": summary, "ants": ants_rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
