"""Training the brain extraction network on synthetic whole heads rendered from label maps.

``python -m VoxelMorphRegLib.pipelines.brain_mask_training --maps DIR --out RUN [--steps N]``

Label maps 01-18 train, 19-20 validate (the validation renders are fixed by seed: T1, T2, FLAIR and
random contrast, plus T1 with thick slices). The target is the brain's signed distance: every
label below 100 (the brain structures and the CSF inside the skull) is brain; skull, scalp, eyes
and neck (the maps' labels 100 and above) and air are not. ``RUN`` receives ``last.pt`` (with the
optimiser, every few minutes and at the end; SIGTERM writes it too), ``best.pt`` (the highest
validation Dice) and ``log.csv``; running the same command again resumes from ``last.pt``.
``--init FILE`` starts a new schedule from a model file's weights (the bundled one, to train further).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..brain_mask_model import BrainMaskConfig, load_brain_mask_model, save_brain_mask_model
from ..freesurfer_labels import T1_INTENSITY
from ..tensor.head_synthesis import HeadSynthesisSettings, render_head

EXTRA_CEREBRAL_FIRST = 100  # label IDs from here on are outside the brain (skull, scalp, eyes, neck...)
VALIDATION_CONTRASTS = ("t1", "t2", "flair", "random", "t1-thick")


def brain_of(labels: np.ndarray) -> np.ndarray:
    """The brain of a whole-head label map: every label in 1-99 (structures and CSF inside the skull)."""
    return (labels > 0) & (labels < EXTRA_CEREBRAL_FIRST)


def load_map(path, cache: Path | None = None):
    """``(labels, signed distance in mm)`` of a label map as ``[1, 1, K, J, I]`` float tensors (cached)."""
    cached = cache / (Path(path).name.split(".")[0] + ".npz") if cache else None
    if cached and cached.exists() and cached.stat().st_mtime >= os.stat(path).st_mtime:
        data = np.load(cached)
        labels, distance = data["labels"], data["distance"].astype(np.float32)
    else:
        image = sitk.ReadImage(str(path))
        labels = sitk.GetArrayFromImage(image).astype(np.int16)
        mask = sitk.GetImageFromArray(brain_of(labels).astype(np.uint8))
        mask.CopyInformation(image)
        distance = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(mask, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)).astype(np.float32)
        if cached:
            cache.mkdir(parents=True, exist_ok=True)
            np.savez(cached, labels=labels, distance=distance.astype(np.float16))
    return torch.from_numpy(labels.astype(np.float32))[None, None], torch.from_numpy(distance)[None, None]


def tissue_table(size: int = 1024) -> torch.Tensor:
    table = torch.full((size,), float("nan"))
    for label, value in T1_INTENSITY.items():
        table[label] = value
    return table


def dice_of_distance(prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> float:
    a, b = (prediction < 0) & (weight > 0), (target < 0) & (weight > 0)
    return float(2 * (a & b).sum() / (a.sum() + b.sum()).clamp_min(1))


def loss_of(prediction, target, weight, clip: float):
    """Huber on the signed distance, clipped where the target is (far from the surface only the sign matters),
    weighted towards the surface."""
    prediction = prediction.clamp(-clip, clip)
    near = 1 + 3 * torch.exp(-target.abs() / 5)
    per_voxel = torch.nn.functional.smooth_l1_loss(prediction, target, reduction="none", beta=2.0)
    return (per_voxel * near * weight).sum() / (near * weight).sum().clamp_min(1)


def validation_set(maps, seed: int, settings: HeadSynthesisSettings, tissue):
    samples = []
    for index, (labels, distance) in enumerate(maps):
        for number, contrast in enumerate(VALIDATION_CONTRASTS):
            generator = torch.Generator().manual_seed(seed + 100 * index + number)
            own = HeadSynthesisSettings(**{**asdict(settings), "thick_slices": 1.0 if contrast.endswith("thick") else 0.0, "fov_cut": 0.0, "lesions": 0.0})
            image, target, weight = render_head(labels, distance, tissue, generator, own, contrast=contrast.split("-")[0])
            samples.append((contrast, image, target, weight))
    return samples


def validate(network, samples) -> dict:
    network.eval()
    scores = {}
    with torch.no_grad():
        for contrast, image, target, weight in samples:
            scores.setdefault(contrast, []).append(dice_of_distance(network(image).float(), target, weight))
    network.train()
    result = {name: float(np.mean(values)) for name, values in scores.items()}
    result["mean"] = float(np.mean([v for values in scores.values() for v in values]))
    return result


class SyntheticHeads(torch.utils.data.IterableDataset):
    """Endless batches of rendered training heads (rendered in a worker process beside the training step)."""

    def __init__(self, maps, tissue, settings, batch: int, seed: int):
        super().__init__()
        self.maps, self.tissue, self.settings, self.batch, self.seed = maps, tissue, settings, batch, seed

    def __iter__(self):
        # A stop (SIGTERM to the whole process group, Ctrl-C) is the training loop's to handle: it saves last.pt
        # and ends the loader; a worker dying of the signal first would end the run without saving.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        torch.set_num_threads(1)
        generator = torch.Generator().manual_seed(self.seed)
        while True:
            parts = [render_head(*self.maps[int(torch.randint(0, len(self.maps), (), generator=generator))], self.tissue, generator, self.settings) for _ in range(self.batch)]
            yield tuple(torch.cat(items) for items in zip(*parts))


def cosine_rate(step: int, total: int, peak: float, warmup: int = 200, floor: float = 0.02) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(args) -> int:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = sorted(Path(args.maps).glob("*.nii*"))
    if len(paths) < 3:
        print(f"voxelmorphreg: {args.maps}: fewer than 3 label maps", file=sys.stderr)
        return 2
    train_paths, val_paths = paths[: -args.validation_maps], paths[-args.validation_maps:]
    cache = Path(args.cache) if args.cache else None
    t0 = time.time()
    train_maps = [load_map(p, cache) for p in train_paths]
    val_maps = [load_map(p, cache) for p in val_paths]
    print(f"loaded {len(train_maps)} training and {len(val_maps)} validation maps in {time.time() - t0:.0f} s", flush=True)
    settings = HeadSynthesisSettings()
    tissue = tissue_table()
    config = BrainMaskConfig(spacing=settings.spacing, training={
        "data": f"label maps {', '.join(p.name.split('.')[0][-2:] for p in train_paths)} (validation {', '.join(p.name.split('.')[0][-2:] for p in val_paths)})",
        "command": " ".join(sys.argv), "steps": args.steps, "batch": args.batch, "learning_rate": args.learning_rate,
    })
    network = config.build()
    step, best, seconds = 0, -1.0, 0.0
    last = out / "last.pt"
    if args.init and not last.exists():  # a new schedule from trained weights (e.g. the bundled model)
        network, _, _ = load_brain_mask_model(args.init)
        print(f"starting from the weights of {args.init}", flush=True)
    optimiser = torch.optim.AdamW(network.parameters(), lr=args.learning_rate, weight_decay=1e-4)
    if last.exists():
        network, _, payload = load_brain_mask_model(last)
        network.train()
        optimiser = torch.optim.AdamW(network.parameters(), lr=args.learning_rate, weight_decay=1e-4)
        optimiser.load_state_dict(payload["optimiser"])
        step, best, seconds = int(payload["step"]), float(payload["best"]), float(payload.get("seconds", 0.0))
        print(f"resumed from {last} at step {step} (best validation Dice {best:.4f})", flush=True)
    network.train()
    samples = validation_set(val_maps, 12345, settings, tissue)
    loader = iter(torch.utils.data.DataLoader(SyntheticHeads(train_maps, tissue, settings, args.batch, args.seed + step), batch_size=None, num_workers=args.workers, prefetch_factor=2 if args.workers else None))
    network = network.to(memory_format=torch.channels_last_3d)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    log_path = out / "log.csv"
    new_log = not log_path.exists()
    log = open(log_path, "a", newline="")
    writer = csv.writer(log)
    if new_log:
        writer.writerow(["step", "loss", "seconds_per_step", "learning_rate", "val_mean", *VALIDATION_CONTRASTS])

    def checkpoint(path, extra):
        config.training.update(step=step, best_validation_dice=best, training_seconds=round(seconds))
        save_brain_mask_model(path, network, config, extra)

    last_saved = time.time()
    losses = []
    while step < args.steps and not stop["now"]:
        started = time.time()
        rate = cosine_rate(step, args.steps, args.learning_rate)
        for group in optimiser.param_groups:
            group["lr"] = rate
        images, targets, weights = next(loader)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            prediction = network(images.contiguous(memory_format=torch.channels_last_3d))
        loss = loss_of(prediction.float(), targets, weights, settings.distance_clip)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        step += 1
        elapsed = time.time() - started
        seconds += elapsed
        losses.append(float(loss.detach()))
        row = [step, f"{losses[-1]:.4f}", f"{elapsed:.3f}", f"{rate:.2e}", "", *[""] * len(VALIDATION_CONTRASTS)]
        if step % args.validate_every == 0 or step == args.steps:
            scores = validate(network, samples)
            row[4:] = [f"{scores['mean']:.4f}", *[f"{scores[c]:.4f}" for c in VALIDATION_CONTRASTS]]
            print(f"step {step} loss {np.mean(losses[-args.validate_every:]):.3f} val {scores['mean']:.4f} " + " ".join(f"{c} {scores[c]:.3f}" for c in VALIDATION_CONTRASTS) + f" ({elapsed:.2f} s/step)", flush=True)
            if scores["mean"] > best:
                best = scores["mean"]
                checkpoint(out / "best.pt", {"step": step, "best": best})
        writer.writerow(row)
        if time.time() - last_saved > args.checkpoint_minutes * 60:
            log.flush()
            checkpoint(last, {"optimiser": optimiser.state_dict(), "step": step, "best": best, "seconds": seconds})
            last_saved = time.time()
    log.flush()
    checkpoint(last, {"optimiser": optimiser.state_dict(), "step": step, "best": best, "seconds": seconds})
    print(f"{'stopped' if stop['now'] else 'finished'} at step {step}; best validation Dice {best:.4f}", flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m VoxelMorphRegLib.pipelines.brain_mask_training", description="Train the brain extraction network on synthetic heads.")
    parser.add_argument("--maps", required=True, help="folder of whole-head label maps (the last --validation-maps validate)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=12000)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--validation-maps", type=int, default=2)
    parser.add_argument("--validate-every", type=int, default=250)
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", default=None, help="start from these weights (a brain mask model file) when --out holds no last.pt")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering heads beside the training step")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="bfloat16 autocast for the network (measured 2x faster on an AVX-512 bf16 CPU)")
    parser.add_argument("--cache", default=None, help="folder for the maps' signed distances (computed once)")
    return train(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
