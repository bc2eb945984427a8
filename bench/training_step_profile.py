"""Where a training step's time goes, and what bf16 autocast and channels_last_3d buy.

    python bench/training_step_profile.py [--steps 12] [--warmup 3] [--json out.json]

Runs the steps of ``voxelmorphreg train`` (the v2 recipe and architecture, subjects from
``training/v2/train.csv`` prepared into ``work_cache/v2``) with the same pairs twice: once with
float32 convolutions on contiguous tensors (how v1 trained), once with bf16 autocast and the
channels_last_3d layout (``--precision auto`` on this CPU). Each step is cut into drawing the pair
(synthesis, augmentation), the U-Net forward, integration, the losses (warp + LNCC for real
pairs, Dice on the velocity grid for synthetic ones), backward and the Adam step; the medians
per pair kind are printed. Take the figures with nothing else running (pause a training first).
Needs ``../shared/data``; without it the script says so and exits 0.
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
DATA = ROOT.parent / "shared" / "data"
STAGES = ("draw", "forward", "integration", "losses", "backward", "optimiser", "step")


def subjects_for_profile(config, count_maps: int = 3, count_real: int = 3):
    from VoxelMorphRegLib.pipelines.training_data import prepare_all
    from VoxelMorphRegLib.pipelines.training_sources import sources_from

    sources = sources_from(ROOT / "training" / "v2" / "train.csv")
    maps = [s for s in sources if not s.image][:count_maps]
    real = [s for s in sources if s.image][:count_real]
    atlas = DATA / "unlabeled" / "conditional_lapirn_image_A_fullsize.nii.gz"
    return prepare_all(maps + real, atlas, config, ROOT / "work_cache" / "v2", False, True, log=lambda m: None)


def profile(subjects, config, bf16: bool, steps: int, warmup: int, seed: int = 0) -> dict:
    import torch

    from VoxelMorphRegLib.pipelines.train import _shared_labels, brain_dice_labels, label_dice_on_grid
    from VoxelMorphRegLib.pipelines.training_data import PairRecipe, TrainingPairs
    from VoxelMorphRegLib.tensor.integration import integrate_velocity
    from VoxelMorphRegLib.tensor.losses import ImageSimilarity, LabelDice, Smoothness
    from VoxelMorphRegLib.tensor.warping import resize_flow, warp

    torch.manual_seed(seed)
    network = config.build()
    if bf16:
        network = network.to(memory_format=torch.channels_last_3d)
    network.train()
    optimiser = torch.optim.Adam(network.parameters(), lr=3e-4)
    similarity, smoothness, dice_loss = ImageSimilarity("lncc", 7), Smoothness("gradient"), LabelDice()
    labels30 = json.loads((DATA / "aseg" / "labels30.json").read_text())
    dice_labels = brain_dice_labels(labels30)
    recipe = PairRecipe(augment_voxels=6.0 / 2.0, synthetic_fraction=0.7, whole_head_fraction=0.5, t1_fraction=0.5)
    pairs = iter(TrainingPairs(subjects, recipe, seed))
    rows = []
    for index in range(warmup + steps):
        t = [time.perf_counter()]
        batch = next(pairs)
        kind = batch.get("kind", "real")
        moving, fixed = batch["moving"], batch["fixed"]
        if bf16:
            moving, fixed = moving.contiguous(memory_format=torch.channels_last_3d), fixed.contiguous(memory_format=torch.channels_last_3d)
        t.append(time.perf_counter())
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=bf16):
            velocity = network.unet(moving, fixed)
        velocity = velocity.float().contiguous()
        t.append(time.perf_counter())
        coarse_flow = integrate_velocity(velocity, network.integration_steps)
        t.append(time.perf_counter())
        loss = smoothness(velocity)
        if kind == "real":
            loss = loss + similarity(warp(moving, resize_flow(coarse_flow, moving.shape[2:])), fixed)
        if batch["moving_labels"] is not None and batch["fixed_labels"] is not None:
            values = _shared_labels(batch["moving_labels"], batch["fixed_labels"], dice_labels)
            if values.numel():
                loss = loss + label_dice_on_grid(batch["moving_labels"], batch["fixed_labels"], coarse_flow, values, dice_loss)
        t.append(time.perf_counter())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        t.append(time.perf_counter())
        optimiser.step()
        t.append(time.perf_counter())
        if index >= warmup:
            times = [b - a for a, b in zip(t, t[1:])]
            rows.append({"kind": kind, **dict(zip(STAGES, times)), "step": t[-1] - t[0]})
    summary = {}
    for kind in sorted({r["kind"] for r in rows}) + ["all"]:
        chosen = [r for r in rows if kind in ("all", r["kind"])]
        summary[kind] = {"steps": len(chosen), **{stage: round(statistics.median(r[stage] for r in chosen), 3) for stage in STAGES}}
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if not (DATA / "aseg").is_dir():
        print(f"skipped: {DATA} not found (only on the development machines)")
        return 0
    import torch

    from VoxelMorphRegLib.model_resolution import bundled_model_path
    from VoxelMorphRegLib.checkpoint import load_checkpoint

    _, config, _ = load_checkpoint(bundled_model_path())
    subjects = subjects_for_profile(config)
    results = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    for name, bf16 in (("fp32, contiguous (v1)", False), ("bf16 autocast, channels_last_3d (v2)", True)):
        results[name] = profile(subjects, config, bf16, args.steps, args.warmup)
    print(f"training step on {results['threads']} threads, torch {results['torch']}; median seconds per stage")
    print(f"| layout | pair kind | steps | {' | '.join(STAGES)} |")
    print("|" + " --- |" * (len(STAGES) + 3))
    for name, summary in results.items():
        if not isinstance(summary, dict):
            continue
        for kind, row in summary.items():
            print(f"| {name} | {kind} | {row['steps']} | " + " | ".join(f"{row[s]:.3f}" for s in STAGES) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
