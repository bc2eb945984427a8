"""Train a registration model: ``voxelmorphreg train`` (the loop; the data are in :mod:`.training_data`).

Each step draws a pair (see :mod:`.training_data` for the kinds of pair and their losses), runs
the U-Net (bf16 autocast for the convolutions where the device supports it; fields, grids and
losses in float32), integrates the velocity and takes, per kind of pair:

- Dice over the brain structures of the warped one-hot labels, on the velocity's grid (half
  the model grid: 8x cheaper, the field is smooth there) where both sides have labels;
- LNCC between the warped and the fixed image only where both images are real;
- the smoothness of the velocity always.

The best checkpoint is chosen on the validation pairs (held-out label maps rendered with a
T1-like intensity, skull-stripped and whole-head): the mean of both variants' Dice.
"""

from __future__ import annotations

import csv
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from monai.data import DataLoader
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import check_resumable, load_checkpoint, save_checkpoint
from ..contract import BEST_CHECKPOINT, LAST_CHECKPOINT, TRAINING_LOG, TRAINING_LOG_COLUMNS, Resumed, Step, Validation, no_events
from ..errors import VoxelMorphRegError
from ..freesurfer_labels import BRAIN_LABELS
from ..image.io import ensure_output_folder
from ..tensor.devices import select_device
from ..tensor.integration import integrate_velocity
from ..tensor.losses import ImageSimilarity, LabelDice, Smoothness, one_hot
from ..tensor.warping import resize_flow, warp, warp_labels
from .label_metrics import dice_per_label
from .training_data import PairRecipe, Subject, TrainingPairs, prepare_all, prepare_subject, skull_stripped, validation_pairs  # noqa: F401  (re-exported)
from .training_sources import SubjectSource, sources_from  # noqa: F401  (re-exported)

LOG_COLUMNS = list(TRAINING_LOG_COLUMNS)


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
    similarity_weight: float = 1.0
    augment_displacement_mm: float = 6.0
    validate_every: int = 100
    checkpoint_every: int = 100  # steps between last.pt writes (about a minute on a 2-core CPU)
    workers: int = 0  # DataLoader worker processes drawing and augmenting pairs
    seed: int = 0
    device: str = "auto"
    skull_strip_labels: bool = False
    eval_labels: list = field(default_factory=list)
    synthetic_fraction: float = 0.7
    whole_head_fraction: float = 0.5
    t1_fraction: float = 0.5
    precision: str = "auto"  # auto: bf16 convolutions where the device has fast bf16, else fp32
    command: str = ""


def bf16_is_fast(device: torch.device) -> bool:
    """CUDA with bf16, or a CPU whose oneDNN has bf16 kernels (AVX-512 BF16 / AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _precision(options: TrainingOptions, device: torch.device) -> bool:
    if options.precision not in ("auto", "bf16", "fp32"):
        raise VoxelMorphRegError(f"--precision must be auto, bf16 or fp32, got {options.precision!r}")
    return options.precision == "bf16" or (options.precision == "auto" and bf16_is_fast(device))


def brain_dice_labels(eval_labels) -> list[int]:
    """Labels the Dice is taken over: the brain structures (those of ``eval_labels`` when given)."""
    brain = [int(v) for v in eval_labels if int(v) in BRAIN_LABELS] if eval_labels else []
    return brain or list(BRAIN_LABELS)


@torch.no_grad()
def validate(network, pairs, device, eval_labels) -> dict:
    """Mean Dice per validation variant (``skull-stripped``, ``whole-head``) and their mean (``all``)."""
    network.eval()
    scores: dict = {}
    restrict = brain_dice_labels(eval_labels)
    for pair in pairs:
        (_, m_img, m_lab), (_, f_img, f_lab) = pair["moving"], pair["fixed"]
        output = network(m_img.to(device), f_img.to(device))
        warped = warp_labels(m_lab.to(device), output.flow).cpu().numpy()[0, 0]
        dice = dice_per_label(warped, f_lab.numpy()[0, 0], restrict)
        if dice:
            scores.setdefault(pair["variant"], []).append(float(np.mean(list(dice.values()))))
    network.train()
    result = {variant: float(np.mean(values)) for variant, values in scores.items()}
    result["all"] = float(np.mean(list(result.values()))) if result else float("nan")
    return result


def _shared_labels(a: torch.Tensor, b: torch.Tensor, restrict) -> torch.Tensor:
    common = np.intersect1d(torch.unique(a).cpu().numpy(), torch.unique(b).cpu().numpy())
    common = np.intersect1d(common, np.asarray(restrict))
    return torch.from_numpy(common[common != 0])


def label_dice_on_grid(moving_labels, fixed_labels, flow, values, dice_loss) -> torch.Tensor:
    """Soft Dice loss of the moving labels warped by ``flow`` (voxel units of its own grid).

    The one-hot maps are resampled onto the flow's grid (trilinear, corners aligned as in
    :func:`resize_flow`), so that on a coarser grid than the labels' the loss costs less.
    """
    shape = tuple(flow.shape[2:])
    moving_one_hot, fixed_one_hot = one_hot(moving_labels, values), one_hot(fixed_labels, values)
    if tuple(moving_one_hot.shape[2:]) != shape:
        moving_one_hot = F.interpolate(moving_one_hot, size=shape, mode="trilinear", align_corners=True)
        fixed_one_hot = F.interpolate(fixed_one_hot, size=shape, mode="trilinear", align_corners=True)
    return dice_loss(warp(moving_one_hot, flow), fixed_one_hot)


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


def train(options: TrainingOptions, train_subjects: list, val_subjects: list, config, log=print, should_stop=lambda: False, init: str | None = None, atlas=None, events=no_events) -> dict:
    """Run (or resume) training; return a summary. Checkpoints: ``last.pt`` and ``best.pt`` in ``out``.

    Under ``torchrun --nproc_per_node=N`` every process trains on its own random pairs and
    DistributedDataParallel averages the gradients; only rank 0 validates, logs and writes.
    With ``atlas`` (a prepared subject), every pair registers a training subject to it.
    ``events`` receives the contract's ``Resumed``, ``Step`` (every 10 steps) and ``Validation``
    events on rank 0 (the front ends' progress).
    """
    out = ensure_output_folder(options.out)
    ranks = _Distributed(options.device)
    device = ranks.device
    if not ranks.main:
        log = lambda message: None  # noqa: E731
    bf16 = _precision(options, device)
    torch.manual_seed(options.seed)
    network = config.build().to(device)
    if device.type == "cpu":
        network = network.to(memory_format=torch.channels_last_3d)  # faster oneDNN convolutions
    optimiser = torch.optim.Adam(network.parameters(), lr=options.learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(1, options.steps), eta_min=options.learning_rate * 0.02)
    similarity = ImageSimilarity(options.similarity, options.lncc_window).to(device)
    smoothness = Smoothness(options.smoothness).to(device)
    dice_loss = LabelDice()
    dice_labels = brain_dice_labels(options.eval_labels)
    start_step, best = 0, -math.inf
    last_path, best_path = out / LAST_CHECKPOINT, out / BEST_CHECKPOINT
    if last_path.exists():
        payload = check_resumable(last_path, config, device)  # one line naming what differs from this run's architecture
        network.load_state_dict(payload["state_dict"])
        if "optimiser" in payload:
            optimiser.load_state_dict(payload["optimiser"])
            scheduler.load_state_dict(payload["scheduler"])
        start_step = int(payload.get("step", 0))
        config.training = dict(payload["config"].get("training", {}))
        best = float(payload.get("best_dice", -math.inf))
        log(f"resuming from {last_path} at step {start_step} (best validation Dice so far {best:.4f})")
        if ranks.main:
            events(Resumed(start_step, str(last_path), best if math.isfinite(best) else None))
    elif init:
        initial, _, _ = load_checkpoint(init, device)
        network.load_state_dict(initial.state_dict())
        log(f"starting from the weights of {init}")
    velocity_net = ranks.wrap(network.unet)  # the only part with parameters
    mean_spacing = float(np.mean(config.spacing))
    recipe = PairRecipe(
        augment_voxels=options.augment_displacement_mm / mean_spacing,
        synthetic_fraction=options.synthetic_fraction,
        whole_head_fraction=0.0 if options.skull_strip_labels else options.whole_head_fraction,
        t1_fraction=options.t1_fraction,
    )
    pairs = TrainingPairs(train_subjects, recipe, options.seed + 7919 * start_step, atlas=atlas)
    loader = DataLoader(pairs, batch_size=None, collate_fn=_as_is, num_workers=options.workers, persistent_workers=options.workers > 0)
    batches = iter(loader)
    val = validation_pairs(val_subjects, options.seed, recipe) if ranks.main else []
    writer = board = log_file = None
    if ranks.main:
        log_path = out / TRAINING_LOG
        new_log = not log_path.exists()
        if not new_log:
            with log_path.open(newline="") as handle:
                header = next(csv.reader(handle), [])
            if header != LOG_COLUMNS:
                raise VoxelMorphRegError(f"{log_path}: written by another version of the training (columns differ); use another --out")
        log_file = log_path.open("a", newline="")
        writer = csv.writer(log_file)
        if new_log:
            writer.writerow(LOG_COLUMNS)
        try:
            from torch.utils.tensorboard import SummaryWriter

            board = SummaryWriter(str(out / "tensorboard"))
        except Exception:  # tensorboard is optional (the 'train' extra)
            board = None
    if ranks.enabled:
        log(f"distributed training: {ranks.world} processes, backend {dist.get_backend()}")
    log(f"training on {device.type.upper()}, convolutions in {'bf16' if bf16 else 'fp32'}; {len(val)} validation pairs")
    network.train()
    started = time.perf_counter()
    window_start, window_steps = started, 0
    provenance = dict(config.training)
    provenance["wall_seconds_before_resume"] = float(provenance.get("wall_seconds", 0.0))
    provenance["processes"] = ranks.world
    provenance["precision"] = "bf16" if bf16 else "fp32"
    step = start_step
    bf16_retries = 0
    save = ranks.main
    try:
        for step in range(start_step + 1, options.steps + 1):
            if should_stop():
                log("stop requested")
                step -= 1
                break
            batch = next(batches)
            kind = batch.get("kind", "real")
            moving, fixed = batch["moving"].to(device), batch["fixed"].to(device)
            moving_labels = None if batch["moving_labels"] is None else batch["moving_labels"].to(device)
            fixed_labels = None if batch["fixed_labels"] is None else batch["fixed_labels"].to(device)
            channels_last = device.type == "cpu" and min(moving.shape[2:]) >= 2 * network.divisor
            if channels_last:
                moving, fixed = moving.contiguous(memory_format=torch.channels_last_3d), fixed.contiguous(memory_format=torch.channels_last_3d)

            def losses(autocast: bool):
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
                    velocity = velocity_net(moving, fixed)
                velocity = velocity.float().contiguous()  # fields and sampling grids stay float32
                coarse_flow = integrate_velocity(velocity, network.integration_steps)
                smooth = smoothness(velocity)
                loss = options.smoothness_weight * smooth
                sim = torch.zeros((), device=device)
                if kind == "real" and options.similarity_weight > 0:  # both images real: their similarity means something
                    flow = resize_flow(coarse_flow, moving.shape[2:])
                    sim = similarity(warp(moving, flow), fixed)
                    loss = loss + options.similarity_weight * sim
                dice_value = torch.zeros((), device=device)
                if options.dice_weight > 0 and moving_labels is not None and fixed_labels is not None:
                    values = _shared_labels(moving_labels, fixed_labels, dice_labels)
                    if values.numel():
                        dice_value = label_dice_on_grid(moving_labels, fixed_labels, coarse_flow, values, dice_loss)
                        loss = loss + options.dice_weight * dice_value
                if not torch.isfinite(loss):
                    raise VoxelMorphRegError(f"training diverged at step {step} (loss is {loss.item()}); lower --learning-rate")
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                return loss, sim, smooth, dice_value

            loss, sim, smooth, dice_value = losses(bf16)
            if bf16 and not ranks.enabled and not all(bool(torch.isfinite(p.grad).all()) for p in network.parameters() if p.grad is not None):
                # oneDNN's bf16 convolutions have been seen to return NaN gradients now and then on tiny
                # grids; such a step is done again in float32 rather than ending the run.
                bf16_retries += 1
                if bf16_retries == 1:
                    log(f"warning: non-finite bf16 gradients at step {step}; the step was redone in float32 (counted in the checkpoint's provenance)")
                loss, sim, smooth, dice_value = losses(False)
                provenance["bf16_steps_redone_in_fp32"] = int(provenance.get("bf16_steps_redone_in_fp32", 0)) + 1
            optimiser.step()
            scheduler.step()
            if not ranks.main:
                continue
            window_steps += 1
            rate = (time.perf_counter() - window_start) / window_steps
            if window_steps >= 200:  # seconds per step over the recent steps, not since the start
                window_start, window_steps = time.perf_counter(), 0
            scores = {}
            if val and (step % options.validate_every == 0 or step == options.steps):
                scores = validate(network, val, device, options.eval_labels)
                if board:
                    for name, value in scores.items():
                        board.add_scalar(f"validation/dice_{name}", value, step)
                improved = scores["all"] > best
                if improved:
                    best = scores["all"]
                    provenance.update({"best_step": step, "best_validation_dice": round(best, 4), "best_validation": {k: round(v, 4) for k, v in scores.items()}})
                    config.training = _provenance(provenance, step, options, started)
                    save_checkpoint(best_path, network, config)
            fmt = lambda key: "" if key not in scores else f"{scores[key]:.4f}"  # noqa: E731
            writer.writerow([step, kind, f"{loss.item():.5f}", f"{sim.item():.5f}", f"{smooth.item():.5f}", f"{dice_value.item():.5f}", f"{scheduler.get_last_lr()[0]:.3g}", f"{rate:.3f}", fmt("all"), fmt("skull-stripped"), fmt("whole-head")])
            if board:
                board.add_scalar("loss/total", loss.item(), step)
                board.add_scalar(f"loss/similarity_{kind}", sim.item(), step)
                board.add_scalar("loss/smoothness", smooth.item(), step)
                board.add_scalar("loss/dice", dice_value.item(), step)
            if scores:
                events(Validation(step, scores["all"], best, improved=improved, variants={k: v for k, v in scores.items() if k != "all"}))
            if step % 10 == 0 or scores or step == options.steps:
                log_file.flush()
                eta = rate * (options.steps - step)
                extra = ""
                if scores:
                    parts = ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if k != "all")
                    extra = f" val_dice={scores['all']:.4f} ({parts}; best {best:.4f})"
                events(Step(step, options.steps, loss.item(), sim.item(), smooth.item(), dice_value.item(), scheduler.get_last_lr()[0], rate, eta))
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
