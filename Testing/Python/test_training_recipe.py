"""The training recipe: each loss only where it means something, whole-head and T1-like rendering,
validation variants, and a Dice term that changes what the network learns."""

import csv

import numpy as np
import pytest
import torch

from VoxelMorphRegLib.checkpoint import ModelConfig
from VoxelMorphRegLib.freesurfer_labels import BRAIN_LABELS, T1_INTENSITY
from VoxelMorphRegLib.pipelines import train as training
from VoxelMorphRegLib.pipelines.training_data import PairRecipe, Subject, TrainingPairs, skull_stripped, validation_pairs
from VoxelMorphRegLib.tensor.synthesis import image_from_labels

SHAPE = (24, 24, 24)


def head_labels(shift=0):
    """A toy whole-head map: white matter inside cortex inside CSF, a ventricle, skull (515) and skin (516) around."""
    k, j, i = np.meshgrid(*[np.arange(n) - n / 2 + 0.5 for n in SHAPE], indexing="ij")
    r = np.sqrt((k - shift) ** 2 + j**2 + (i + shift / 2) ** 2)
    labels = np.zeros(SHAPE, np.int32)
    labels[r < 11.5] = 516
    labels[r < 10.5] = 515
    labels[r < 9.5] = 24
    labels[r < 8.5] = 3
    labels[r < 6.0 + 0.3 * shift] = 2
    labels[(r < 2.5) & (i > 0)] = 4
    labels[(r < 2.5) & (i <= 0)] = 17
    return labels


def subjects(real=0):
    out = [Subject(f"map{n}", None, head_labels(shift)) for n, shift in enumerate((0, 1, -1))]
    rng = np.random.default_rng(0)
    for n in range(real):
        out.append(Subject(f"t1_{n}", np.clip(rng.random(SHAPE, dtype=np.float32) * 0.2 + (head_labels(n) > 0) * 0.6, 0, 1), None))
    return out


def test_skull_stripping_keeps_brain_structures_only():
    labels = head_labels()
    stripped = skull_stripped(labels)
    assert set(np.unique(stripped)) == {0, 2, 3, 4, 17}  # skull, skin and extra-cerebral CSF became background
    assert torch.equal(skull_stripped(torch.from_numpy(labels)), torch.from_numpy(stripped))
    assert 24 not in BRAIN_LABELS and 515 not in BRAIN_LABELS and 17 in BRAIN_LABELS


def test_t1_like_rendering_orders_the_tissues_as_a_t1_does():
    labels = torch.from_numpy(skull_stripped(head_labels()))[None, None]
    image = image_from_labels(labels, generator=torch.Generator().manual_seed(3), label_means=T1_INTENSITY, zero_background=True, noise_std=0.0, blur_sigma=0.0, bias_strength=0.0)[0, 0]
    mean = {v: float(image[labels[0, 0] == v].mean()) for v in (0, 2, 3, 4)}
    assert mean[2] > mean[3] > mean[4]  # white matter > grey matter > CSF
    assert mean[0] == 0.0  # skull-stripped: the background is exactly zero
    assert 0 <= float(image.min()) and float(image.max()) <= 1


def test_whole_head_draws_keep_the_skull_and_skull_stripped_draws_do_not():
    pairs = TrainingPairs(subjects(), PairRecipe(augment_voxels=0.0, affine_degrees=0, affine_scale=0, affine_shift=0), seed=0)
    generator = torch.Generator().manual_seed(0)
    outside = torch.from_numpy(skull_stripped(head_labels()) == 0) & torch.from_numpy(head_labels() > 0)
    whole, _ = pairs.draw(pairs.synthetic[0], generator, whole_head=True, t1=True)
    stripped, _ = pairs.draw(pairs.synthetic[0], generator, whole_head=False, t1=True)
    assert float(whole[0, 0][outside].mean()) > 0.05
    assert float(stripped[0, 0][outside].max()) == 0.0
    # the labels stay whole-head either way: the Dice restricts itself to brain structures
    assert training.brain_dice_labels([2, 3, 24, 515]) == [2, 3]


def test_pair_kinds_never_join_an_unlabelled_real_image_with_a_synthetic_one():
    stream = iter(TrainingPairs(subjects(real=2), PairRecipe(augment_voxels=1.0), seed=1))
    kinds = []
    for _ in range(30):
        pair = next(stream)
        kinds.append(pair["kind"])
        if pair["kind"] == "synthetic":
            assert pair["moving_labels"] is not None and pair["fixed_labels"] is not None
        else:
            assert pair["kind"] == "real" and pair["moving_labels"] is None and pair["fixed_labels"] is None
    assert 10 <= kinds.count("synthetic") <= 29 and "real" in kinds  # about 70% synthetic


def test_validation_renders_t1_like_pairs_in_both_variants():
    pairs = validation_pairs(subjects()[:2], seed=0)
    assert sorted(p["variant"] for p in pairs) == ["skull-stripped"] * 2 + ["whole-head"] * 2
    again = validation_pairs(subjects()[:2], seed=0)
    assert all(torch.equal(a["moving"][1], b["moving"][1]) for a, b in zip(pairs, again))  # the same pairs at every validation


def tiny_config():
    return ModelConfig(encoder_features=[8, 16, 16], decoder_features=[16], svf_level=1, spacing=[2.0, 2.0, 2.0])


def run(tmp_path, name, **options):
    defaults = dict(out=str(tmp_path / name), steps=12, learning_rate=3e-3, validate_every=6, checkpoint_every=6, augment_displacement_mm=2.0, precision="fp32")
    training.train(training.TrainingOptions(**{**defaults, **options}), subjects(real=2), subjects()[:2], tiny_config(), log=lambda m: None)
    return list(csv.DictReader(open(tmp_path / name / "log.csv")))


def test_losses_follow_the_kind_of_pair_and_the_dice_term_changes_the_training(tmp_path):
    rows = run(tmp_path, "dice")
    assert {r["kind"] for r in rows} == {"synthetic", "real"}
    for row in rows:
        if row["kind"] == "synthetic":  # two unrelated contrasts: no image similarity, Dice instead
            assert float(row["similarity"]) == 0.0 and float(row["dice_loss"]) > 0.0
        else:  # two real unlabelled images: LNCC, no Dice
            assert float(row["similarity"]) < 0.0 and float(row["dice_loss"]) == 0.0
    assert rows[5]["validation_dice_skull_stripped"] and rows[5]["validation_dice_whole_head"]
    assert float(rows[5]["validation_dice"]) == pytest.approx((float(rows[5]["validation_dice_skull_stripped"]) + float(rows[5]["validation_dice_whole_head"])) / 2, abs=1e-4)
    without = run(tmp_path, "no_dice", dice_weight=0.0)
    assert all(float(r["dice_loss"]) == 0.0 for r in without)
    a = torch.load(tmp_path / "dice" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "no_dice" / "last.pt", weights_only=True)["state_dict"]
    # same seed, same pairs: only the Dice term differs, and it moves the weights
    assert max(float((a[k] - b[k]).abs().max()) for k in a) > 1e-4


def test_resuming_into_a_run_of_another_architecture_is_a_one_line_error(tmp_path):
    run(tmp_path, "run", steps=2, validate_every=100)
    other = ModelConfig(encoder_features=[8, 8, 8], decoder_features=[8], svf_level=1, spacing=[2.0, 2.0, 2.0])
    with pytest.raises(training.VoxelMorphRegError, match="cannot resume: it was trained with encoder_features"):
        training.train(training.TrainingOptions(out=str(tmp_path / "run"), steps=4, precision="fp32"), subjects(real=2), [], other, log=lambda m: None)


def test_bf16_precision_trains_on_the_cpu(tmp_path):
    rows = run(tmp_path, "bf16", steps=3, validate_every=100, precision="bf16")
    assert len(rows) == 3 and all(np.isfinite(float(r["loss"])) for r in rows)


def test_a_step_with_non_finite_bf16_gradients_is_redone_in_float32(tmp_path, monkeypatch):
    """oneDNN's bf16 convolutions sometimes return NaN gradients on tiny grids: such a step is redone in
    float32 (and counted) instead of ending the run."""
    from VoxelMorphRegLib.checkpoint import load_checkpoint
    from VoxelMorphRegLib.tensor.unet import VelocityUNet

    class NanGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * float("nan")

    real = VelocityUNet.forward

    def forward(self, moving, fixed):
        out = real(self, moving, fixed)
        return NanGradient.apply(out) if torch.is_autocast_enabled("cpu") else out

    monkeypatch.setattr(VelocityUNet, "forward", forward)
    messages = []
    options = training.TrainingOptions(out=str(tmp_path / "run"), steps=3, validate_every=100, precision="bf16", augment_displacement_mm=1.0)
    training.train(options, subjects(real=2), [], tiny_config(), log=messages.append)
    assert sum("redone in float32" in m for m in messages) == 1  # said once, not every step
    _, config, payload = load_checkpoint(tmp_path / "run" / "last.pt")
    assert payload["step"] == 3 and config.training["bf16_steps_redone_in_fp32"] == 3
    assert all(bool(torch.isfinite(v).all()) for v in payload["state_dict"].values())
