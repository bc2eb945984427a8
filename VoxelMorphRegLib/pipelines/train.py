"""Train a registration model: ``voxelmorphreg train``.

Subjects come from a folder or a CSV (columns ``image`` and ``labels``; either may be empty).
Each is brought onto the model grid of an atlas (``--atlas``) by the same preprocessing as
``register`` (affine alignment to the atlas, resampling, intensity normalisation) and cached.
Pairs are drawn at random between subjects; label-only subjects get a new synthetic image at
every draw (SynthMorph style). Every step augments with a random smooth deformation and an
intensity corruption.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.distributed as dist
from monai.data import DataLoader, IterableDataset
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import get_worker_info

from ..checkpoint import ModelConfig, load_checkpoint, save_checkpoint
from ..errors import VoxelMorphRegError
from ..image.affine import affine_register
from ..image.io import atomic_path, ensure_output_folder, read_labels, read_volume
from ..image.preprocessing import grid_for, image_on_grid, labels_on_grid
from ..tensor.devices import select_device
from ..tensor.losses import ImageSimilarity, LabelDice, Smoothness, one_hot
from ..tensor.synthesis import corrupt_intensity, image_from_labels, random_deformation
from ..tensor.warping import resize_flow, warp, warp_labels
from .label_metrics import dice_per_label
from .training_sources import SubjectSource, sources_from  # noqa: F401  (re-exported)

# FreeSurfer IDs of brain structures are kept; other labels of whole-head maps (skull, skin,
# extra-cerebral CSF...) become background with --skull-strip-labels, to mimic skull-stripped images.
NON_BRAIN_ASEG = {24}


@dataclass
class Subject:
    name: str
    image: np.ndarray | None  # [K, J, I] float32 on the model grid, None for label-only subjects
    labels: np.ndarray | None  # [K, J, I] int32 on the model grid


@dataclass
class TrainingOptions:
    out: str
    steps: int = 2000
    learning_rate: float = 3e-4
    similarity: str = "lncc"
    lncc_window: int = 7
    smoothness: str = "gradient"
    smoothness_weight: float = 1.0
    dice_weight: float = 1.0
    augment_displacement_mm: float = 6.0
    validate_every: int = 100
    checkpoint_every: int = 50
    workers: int = 0  # DataLoader worker processes drawing and augmenting pairs
    seed: int = 0
    device: str = "auto"
    skull_strip_labels: bool = False
    eval_labels: list = field(default_factory=list)
    command: str = ""


def _pseudo_image(labels: sitk.Image) -> sitk.Image:
    """A rough T1-like image from FreeSurfer labels, only used to align a label-only subject."""
    array = sitk.GetArrayFromImage(labels)
    image = np.zeros(array.shape, np.float32)
    image[array > 0] = 0.3
    image[np.isin(array, [3, 42, 8, 47, 10, 49, 11, 50, 12, 51, 13, 52, 17, 53, 18, 54, 26, 58])] = 0.6  # grey matter
    image[np.isin(array, [2, 41, 7, 46, 16, 28, 60])] = 1.0  # white matter, brainstem, ventral DC
    image[np.isin(array, [4, 43, 5, 44, 14, 15, 24])] = 0.1  # CSF
    out = sitk.GetImageFromArray(image)
    out.CopyInformation(labels)
    return out


def prepare_subject(source: SubjectSource, atlas: sitk.Image, config: ModelConfig, cache: Path | None, skull_strip: bool, align: bool = True, log=print) -> Subject:
    """Load, align to the atlas and bring one subject onto the model grid (cached on disk)."""
    files = [(path, os.stat(path).st_size, os.stat(path).st_mtime_ns) if path and os.path.exists(path) else path for path in (source.image, source.labels)]
    atlas_geometry = [atlas.GetSize(), atlas.GetOrigin(), atlas.GetSpacing(), atlas.GetDirection(), float(sitk.GetArrayViewFromImage(atlas).sum())]
    key_data = [files, config.spacing, config.orientation, config.intensity, config.encoder_features, skull_strip, align, atlas_geometry]
    key = hashlib.sha1(json.dumps(key_data, default=str).encode()).hexdigest()[:16]
    cached = cache / f"{source.name}-{key}.npz" if cache else None
    if cached and cached.exists():
        data = np.load(cached)
        return Subject(source.name, data["image"] if "image" in data else None, data["labels"] if "labels" in data else None)
    started = time.perf_counter()
    image = read_volume(source.image) if source.image else None
    labels = read_labels(source.labels, reference=image) if source.labels else None
    if labels is not None and skull_strip:
        array = sitk.GetArrayFromImage(labels)
        array[(array >= 100) & ((array < 251) | (array > 255))] = 0
        array[np.isin(array, list(NON_BRAIN_ASEG))] = 0
        stripped = sitk.GetImageFromArray(array)
        stripped.CopyInformation(labels)
        labels = stripped
    guide = image if image is not None else _pseudo_image(labels)
    transform = affine_register(atlas, guide) if align else None
    grid = grid_for(atlas, config)
    payload = {}
    if image is not None:
        payload["image"] = image_on_grid(image, grid, transform, config)
    if labels is not None:
        payload["labels"] = labels_on_grid(labels, grid, transform)
    if cached:
        cache.mkdir(parents=True, exist_ok=True)
        with atomic_path(cached) as temporary:  # several processes may prepare the same subject
            with open(temporary, "wb") as handle:
                np.savez_compressed(handle, **payload)
    log(f"prepared {source.name} in {time.perf_counter() - started:.1f} s")
    return Subject(source.name, payload.get("image"), payload.get("labels"))


class RandomPairs(IterableDataset):
    """Endless random (moving, fixed) pairs of distinct subjects, augmented on the fly.

    A MONAI iterable dataset: under a ``DataLoader`` with worker processes each worker draws
    its own stream (seeded by ``seed``, the worker id and the distributed rank), so synthesis
    and augmentation run in parallel with the training step. Items are CPU tensors
    ``[1, 1, K, J, I]``; labels are ``None`` for unlabelled subjects.
    """

    def __init__(self, subjects: list[Subject], augment_voxels: float, seed: int, augment: bool = True, atlas: Subject | None = None):
        super().__init__(data=subjects)
        if len(subjects) < (1 if atlas is not None else 2):
            raise VoxelMorphRegError("training needs at least two subjects (or one and --pairs to-atlas)")
        self.subjects = subjects
        self.augment_voxels = augment_voxels
        self.seed = seed
        self.augment = augment
        self.atlas = atlas  # every pair registers a subject to this one (kept as it is) when given

    def draw(self, subject: Subject, generator: torch.Generator, augment: bool | None = None):
        augment = self.augment if augment is None else augment
        labels = None if subject.labels is None else torch.from_numpy(np.ascontiguousarray(subject.labels))[None, None]
        if subject.image is None:
            image = image_from_labels(labels, generator=generator)
        else:
            image = torch.from_numpy(np.ascontiguousarray(subject.image))[None, None]
            if augment:
                image = corrupt_intensity(image, generator=generator)
        if augment and self.augment_voxels > 0:
            # drawn and integrated on a half-resolution grid (it is smooth), then upsampled
            shape = image.shape[2:]
            half = [max(2, n // 2) for n in shape]
            flow, _ = random_deformation(half, self.augment_voxels / 2, control_spacing=8.0, generator=generator)
            flow = resize_flow(flow, shape)
            image = warp(image, flow)
            if labels is not None:
                labels = warp(labels.float(), flow, mode="nearest").long()
        return image, labels

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None:
            torch.set_num_threads(1)
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        generator = torch.Generator().manual_seed(self.seed + 1000 * worker + 100_000 * rank)
        while True:
            if self.atlas is not None:
                a = int(torch.randint(len(self.subjects), (1,), generator=generator))
                moving, moving_labels = self.draw(self.subjects[a], generator)
                fixed, fixed_labels = self.draw(self.atlas, generator, augment=False)
            else:
                a, b = torch.randperm(len(self.subjects), generator=generator)[:2].tolist()
                moving, moving_labels = self.draw(self.subjects[a], generator)
                fixed, fixed_labels = self.draw(self.subjects[b], generator)
            yield {"moving": moving, "fixed": fixed, "moving_labels": moving_labels, "fixed_labels": fixed_labels}


def validation_pairs(subjects: list[Subject], seed: int) -> list[tuple]:
    """Every ordered pair of labelled validation subjects; label-only ones get one fixed synthetic image."""
    generator = torch.Generator().manual_seed(seed + 1)
    prepared = []
    for subject in subjects:
        if subject.labels is None:
            continue
        labels = torch.from_numpy(subject.labels)[None, None]
        image = torch.from_numpy(subject.image)[None, None] if subject.image is not None else image_from_labels(labels, generator=generator)
        prepared.append((subject.name, image, labels))
    return [(m, f) for m in prepared for f in prepared if m[0] != f[0]]


@torch.no_grad()
def validate(network, pairs, device, eval_labels) -> float:
    network.eval()
    scores = []
    for (_, m_img, m_lab), (_, f_img, f_lab) in pairs:
        output = network(m_img.to(device), f_img.to(device))
        warped = warp_labels(m_lab.to(device), output.flow).cpu().numpy()[0, 0]
        dice = dice_per_label(warped, f_lab.numpy()[0, 0], eval_labels or None)
        if dice:
            scores.append(float(np.mean(list(dice.values()))))
    network.train()
    return float(np.mean(scores)) if scores else float("nan")


def _shared_labels(a: torch.Tensor, b: torch.Tensor, restrict=None) -> torch.Tensor:
    common = np.intersect1d(torch.unique(a).cpu().numpy(), torch.unique(b).cpu().numpy())
    if restrict:
        common = np.intersect1d(common, np.asarray(restrict))
    return torch.from_numpy(common[common != 0])


def _as_is(item):
    """Items are already single pairs: no collation (a module-level function, so workers can pickle it)."""
    return item


class _Distributed:
    """Rank, world size and device under ``torchrun`` (DistributedDataParallel), or a single process."""

    def __init__(self, requested_device: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.enabled = self.world > 1
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = select_device(requested_device)
        if self.enabled:
            backend = "nccl" if device.type == "cuda" else "gloo"
            if not dist.is_initialized():
                dist.init_process_group(backend)
            if device.type == "cuda":
                device = torch.device("cuda", self.local_rank)
                torch.cuda.set_device(device)
        self.rank = dist.get_rank() if self.enabled else 0
        self.device = device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        if not self.enabled:
            return module
        return DistributedDataParallel(module, device_ids=[self.local_rank] if self.device.type == "cuda" else None)

    def close(self):
        if self.enabled and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def train(options: TrainingOptions, train_subjects: list[Subject], val_subjects: list[Subject], config: ModelConfig, log=print, should_stop=lambda: False, init: str | None = None, atlas: Subject | None = None) -> dict:
    """Run (or resume) training; return a summary. Checkpoints: ``last.pt`` and ``best.pt`` in ``out``.

    Under ``torchrun --nproc_per_node=N`` every process trains on its own random pairs and
    DistributedDataParallel averages the gradients; only rank 0 validates, logs and writes.
    With ``atlas`` (a prepared subject), every pair registers a training subject to it.
    """
    out = ensure_output_folder(options.out)
    ranks = _Distributed(options.device)
    device = ranks.device
    if not ranks.main:
        log = lambda message: None  # noqa: E731
    torch.manual_seed(options.seed)
    network = config.build().to(device)
    optimiser = torch.optim.Adam(network.parameters(), lr=options.learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(1, options.steps), eta_min=options.learning_rate * 0.02)
    similarity = ImageSimilarity(options.similarity, options.lncc_window).to(device)
    smoothness = Smoothness(options.smoothness).to(device)
    dice_loss = LabelDice()
    start_step, best = 0, -math.inf
    last_path, best_path = out / "last.pt", out / "best.pt"
    if last_path.exists():
        _, _, payload = load_checkpoint(last_path, device)
        network.load_state_dict(payload["state_dict"])
        if "optimiser" in payload:
            optimiser.load_state_dict(payload["optimiser"])
            scheduler.load_state_dict(payload["scheduler"])
        start_step = int(payload.get("step", 0))
        config.training = dict(payload["config"].get("training", {}))
        best = float(payload.get("best_dice", -math.inf))
        log(f"resuming from {last_path} at step {start_step} (best validation Dice so far {best:.4f})")
    elif init:
        initial, _, _ = load_checkpoint(init, device)
        network.load_state_dict(initial.state_dict())
        log(f"starting from the weights of {init}")
    velocity_net = ranks.wrap(network.unet)  # the only part with parameters
    mean_spacing = float(np.mean(config.spacing))
    pairs = RandomPairs(train_subjects, options.augment_displacement_mm / mean_spacing, options.seed + 7919 * start_step, atlas=atlas)
    loader = DataLoader(pairs, batch_size=None, collate_fn=_as_is, num_workers=options.workers, persistent_workers=options.workers > 0)
    batches = iter(loader)
    val = validation_pairs(val_subjects, options.seed) if ranks.main else []
    use_amp = device.type == "cuda"
    writer = board = log_file = None
    if ranks.main:
        log_path = out / "log.csv"
        new_log = not log_path.exists()
        log_file = log_path.open("a", newline="")
        writer = csv.writer(log_file)
        if new_log:
            writer.writerow(["step", "loss", "similarity", "smoothness", "dice_loss", "learning_rate", "seconds_per_step", "validation_dice"])
        try:
            from torch.utils.tensorboard import SummaryWriter

            board = SummaryWriter(str(out / "tensorboard"))
        except Exception:  # tensorboard is optional (the 'train' extra)
            board = None
    if ranks.enabled:
        log(f"distributed training: {ranks.world} processes, backend {dist.get_backend()}")
    network.train()
    started = time.perf_counter()
    window_start, window_steps = started, 0
    provenance = dict(config.training)
    provenance["wall_seconds_before_resume"] = float(provenance.get("wall_seconds", 0.0))
    provenance["processes"] = ranks.world
    step = start_step
    save = ranks.main
    try:
        for step in range(start_step + 1, options.steps + 1):
            if should_stop():
                log("stop requested")
                step -= 1
                break
            batch = next(batches)
            moving, fixed = batch["moving"].to(device), batch["fixed"].to(device)
            moving_labels = None if batch["moving_labels"] is None else batch["moving_labels"].to(device)
            fixed_labels = None if batch["fixed_labels"] is None else batch["fixed_labels"].to(device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                velocity = velocity_net(moving, fixed)
            velocity = velocity.float()  # fields and sampling grids stay float32
            flow = network.flow_from_velocity(velocity, moving.shape[2:])
            warped = warp(moving, flow)
            sim = similarity(warped, fixed)
            smooth = smoothness(velocity)
            loss = sim + options.smoothness_weight * smooth
            dice_value = torch.zeros((), device=device)
            if options.dice_weight > 0 and moving_labels is not None and fixed_labels is not None:
                values = _shared_labels(moving_labels, fixed_labels, options.eval_labels)
                if values.numel():
                    warped_one_hot = warp(one_hot(moving_labels, values), flow)
                    dice_value = dice_loss(warped_one_hot, one_hot(fixed_labels, values))
                    loss = loss + options.dice_weight * dice_value
            if not torch.isfinite(loss):
                raise VoxelMorphRegError(f"training diverged at step {step} (loss is {loss.item()}); lower --learning-rate")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            if not ranks.main:
                continue
            window_steps += 1
            rate = (time.perf_counter() - window_start) / window_steps
            val_dice = ""
            if val and (step % options.validate_every == 0 or step == options.steps):
                val_dice = validate(network, val, device, options.eval_labels)
                if board:
                    board.add_scalar("validation/dice", val_dice, step)
                if val_dice > best:
                    best = val_dice
                    provenance.update({"best_step": step, "best_validation_dice": round(best, 4)})
                    config.training = _provenance(provenance, step, options, started)
                    save_checkpoint(best_path, network, config)
            writer.writerow([step, f"{loss.item():.5f}", f"{sim.item():.5f}", f"{smooth.item():.5f}", f"{dice_value.item():.5f}", f"{scheduler.get_last_lr()[0]:.3g}", f"{rate:.3f}", "" if val_dice == "" else f"{val_dice:.4f}"])
            if board:
                board.add_scalar("loss/total", loss.item(), step)
                board.add_scalar("loss/similarity", sim.item(), step)
                board.add_scalar("loss/smoothness", smooth.item(), step)
                board.add_scalar("loss/dice", dice_value.item(), step)
            if step % 10 == 0 or val_dice != "" or step == options.steps:
                log_file.flush()
                eta = rate * (options.steps - step)
                extra = f" val_dice={val_dice:.4f} (best {best:.4f})" if val_dice != "" else ""
                log(f"step {step}/{options.steps} loss={loss.item():.4f} sim={sim.item():.4f} smooth={smooth.item():.4f} dice={dice_value.item():.4f} {rate:.2f} s/step eta {eta / 60:.0f} min{extra}")
            if step % options.checkpoint_every == 0 or step == options.steps:
                _save_last(last_path, network, optimiser, scheduler, config, provenance, step, best, options, started)
    except KeyboardInterrupt:
        if save:
            log(f"interrupted at step {step}; saving {last_path} so that the same command resumes")
            _save_last(last_path, network, optimiser, scheduler, config, provenance, step, best, options, started)
        raise
    finally:
        if log_file:
            log_file.close()
        if board:
            board.close()
    if save:
        _save_last(last_path, network, optimiser, scheduler, config, provenance, step, best, options, started)
        if not best_path.exists():  # no validation set: the last model is the best we know
            save_checkpoint(best_path, network, config)
    ranks.close()
    return {"step": step, "best_validation_dice": best, "out": str(out), "rank": ranks.rank, "processes": ranks.world}


def _provenance(provenance: dict, step: int, options: TrainingOptions, started: float) -> dict:
    """What a checkpoint records of how it was made: steps, command, hardware, options, wall time."""
    provenance = dict(provenance)
    provenance.update({"steps": step, "command": options.command, "hardware": _hardware(options.device), "options": asdict(options)})
    provenance["wall_seconds"] = round(provenance.get("wall_seconds_before_resume", 0.0) + time.perf_counter() - started, 1)
    return provenance


def _save_last(path, network, optimiser, scheduler, config, provenance, step, best, options, started):
    config.training = _provenance(provenance, step, options, started)
    save_checkpoint(path, network, config, extra={"optimiser": optimiser.state_dict(), "scheduler": scheduler.state_dict(), "step": step, "best_dice": best if math.isfinite(best) else -1.0})


def _hardware(device: str) -> str:
    if torch.cuda.is_available() and device != "cpu":
        return torch.cuda.get_device_name(0)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def prepare_all(sources, atlas_path, config, cache, skull_strip, align=True, log=print) -> list[Subject]:
    atlas = read_volume(atlas_path)
    return [prepare_subject(s, atlas, config, cache, skull_strip, align, log) for s in sources]


def main_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
