"""Training: a tiny run lowers the loss and writes a model that `register` loads; resume; torchrun with gloo."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ROOT, blob_labels, blob_volume

from VoxelMorphRegLib.checkpoint import ModelConfig, load_checkpoint
from VoxelMorphRegLib.frontends.cli import main
from VoxelMorphRegLib.pipelines import train as training


def shifted(image, shift):
    return sitk.Resample(image, image, sitk.TranslationTransform(3, [-s for s in shift]), sitk.sitkLinear, 0.0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two labelled subjects (a blob and a shifted, scaled copy) and a label-only one, on 1 mm grids."""
    folder = tmp_path_factory.mktemp("data")
    a = blob_volume(size=(40, 36, 32))
    b = shifted(sitk.Resample(a, a, sitk.ScaleTransform(3, (1.08, 0.95, 1.05)), sitk.sitkLinear, 0.0), (2.0, -1.5, 1.0))
    rows = []
    for name, image in [("a", a), ("b", b)]:
        sitk.WriteImage(image, str(folder / f"{name}_norm.nii.gz"))
        sitk.WriteImage(blob_labels(image), str(folder / f"{name}_seg.nii.gz"))
        rows.append((f"{name}_norm.nii.gz", f"{name}_seg.nii.gz"))
    sitk.WriteImage(blob_labels(shifted(a, (-1.0, 1.0, 0.0))), str(folder / "c_seg.nii.gz"))
    with open(folder / "train.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "labels"])
        writer.writerows(rows + [("", "c_seg.nii.gz")])
    return folder


def tiny_config():
    return ModelConfig(encoder_features=[8, 16, 16], decoder_features=[16], svf_level=1, spacing=[2.0, 2.0, 2.0])


def test_sources_from_a_folder_pair_images_with_labels(dataset):
    sources = {s.name: s for s in training.sources_from(dataset)}
    assert sources["a_norm"].labels.endswith("a_seg.nii.gz") and sources["b_norm"].image.endswith("b_norm.nii.gz")
    assert sources["c"].image is None and sources["c"].labels.endswith("c_seg.nii.gz")  # label-only: synthetic


def test_random_pairs_synthesise_label_only_subjects_on_their_grid(dataset, tmp_path):
    config = tiny_config()
    subjects = training.prepare_all(training.sources_from(dataset / "train.csv"), dataset / "a_norm.nii.gz", config, tmp_path, False, align=False, log=lambda m: None)
    synthetic = next(s for s in subjects if s.image is None)
    pairs = training.TrainingPairs(subjects, training.PairRecipe(augment_voxels=1.0), seed=0)
    image, labels = pairs.draw(synthetic, __import__("torch").Generator().manual_seed(0))
    assert image.shape[2:] == synthetic.labels.shape == labels.shape[2:]
    assert 0 <= float(image.min()) and float(image.max()) <= 1
    background = labels[0, 0].numpy() == 0
    assert float(image[0, 0].numpy()[background].mean()) < float(image[0, 0].numpy()[~background].mean())


def test_tiny_run_lowers_the_loss_writes_a_model_and_resumes(dataset, tmp_path):
    config = tiny_config()
    subjects = training.prepare_all(training.sources_from(dataset / "train.csv"), dataset / "a_norm.nii.gz", config, tmp_path / "cache", False, align=False, log=lambda m: None)
    options = training.TrainingOptions(out=str(tmp_path / "run"), steps=60, learning_rate=2e-3, validate_every=30, checkpoint_every=20, augment_displacement_mm=0.0)
    messages = []
    summary = training.train(options, subjects, subjects[:2], config, log=messages.append)
    assert summary["step"] == 60
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 61))
    losses = [float(r["similarity"]) for r in rows]
    assert np.mean(losses[-15:]) < np.mean(losses[:15]) - 0.005
    network, loaded, payload = load_checkpoint(tmp_path / "run" / "best.pt")
    assert loaded.training["best_step"] in (30, 60) and loaded.spacing == [2.0, 2.0, 2.0]
    assert any("val_dice" in m for m in messages)
    # resume: the same command with more steps continues at step 61
    more = training.TrainingOptions(**{**options.__dict__, "steps": 70})
    messages.clear()
    assert training.train(more, subjects, subjects[:2], config, log=messages.append)["step"] == 70
    assert any("resuming" in m and "at step 60" in m for m in messages)
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert [int(r["step"]) for r in rows][-10:] == list(range(61, 71))
    # and register runs with the trained model
    out = tmp_path / "registered"
    code = main(["register", str(dataset / "a_norm.nii.gz"), str(dataset / "b_norm.nii.gz"), "--out", str(out), "--model", str(tmp_path / "run" / "best.pt"), "--no-affine", "--no-qc", "--quiet"])
    assert code == 0 and json.loads((out / "metrics.json").read_text())["model"].endswith("best.pt")


def test_cli_train_with_worker_processes(dataset, tmp_path):
    code = main([
        "train", "--data", str(dataset / "train.csv"), "--atlas", str(dataset / "a_norm.nii.gz"), "--out", str(tmp_path / "run"),
        "--steps", "4", "--no-affine", "--workers", "1", "--validate-every", "2", "--val", str(dataset / "train.csv"), "--quiet",
        "--default-refine", "7", "--default-refine-smoothness", "0.4",
    ])
    assert code == 0
    _, config, payload = load_checkpoint(tmp_path / "run" / "last.pt")
    assert payload["step"] == 4 and config.training["command"].startswith("voxelmorphreg train")
    # the refinement `register` will run with this model by default
    assert (config.default_refine_iterations, config.default_refine_smoothness, config.default_refine_learning_rate) == (7, 0.4, 0.1)
    code = main(["train", "--data", str(dataset / "train.csv"), "--atlas", str(dataset / "a_norm.nii.gz"), "--out", str(tmp_path / "bad"),
                 "--steps", "1", "--no-affine", "--default-refine-smoothness", "-2", "--quiet"])
    assert code == 2


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun test uses fork-based gloo on Linux")
def test_torchrun_two_processes_with_gloo(dataset, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533", "-m", "VoxelMorphRegLib.frontends.cli",
        "train", "--data", str(dataset / "train.csv"), "--atlas", str(dataset / "a_norm.nii.gz"), "--out", str(tmp_path / "ddp"),
        "--steps", "3", "--no-affine", "--device", "cpu", "--cache", str(tmp_path / "cache"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "distributed training: 2 processes, backend gloo" in result.stderr
    _, config, payload = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert payload["step"] == 3 and config.training["processes"] == 2


def test_to_atlas_pairs_always_use_the_atlas_as_fixed(dataset, tmp_path):
    import torch

    config = tiny_config()
    subjects = training.prepare_all(training.sources_from(dataset / "train.csv"), dataset / "a_norm.nii.gz", config, tmp_path, False, align=False, log=lambda m: None)
    atlas = training.prepare_all([training.SubjectSource("atlas", str(dataset / "a_norm.nii.gz"), str(dataset / "a_seg.nii.gz"))], dataset / "a_norm.nii.gz", config, tmp_path, False, align=False, log=lambda m: None)[0]
    stream = iter(training.TrainingPairs(subjects[1:], training.PairRecipe(augment_voxels=1.0), seed=0, atlas=atlas))
    for _ in range(3):
        pair = next(stream)
        assert torch.equal(pair["fixed"][0, 0], torch.from_numpy(atlas.image))  # the atlas is kept as it is
        assert torch.equal(pair["fixed_labels"][0, 0], torch.from_numpy(atlas.labels))
    code = main([
        "train", "--data", str(dataset / "train.csv"), "--atlas", str(dataset / "a_norm.nii.gz"), "--atlas-labels", str(dataset / "a_seg.nii.gz"),
        "--pairs", "to-atlas", "--out", str(tmp_path / "run"), "--steps", "2", "--no-affine", "--quiet",
    ])
    assert code == 0
    _, config, _ = load_checkpoint(tmp_path / "run" / "last.pt")
    assert config.training["pairs"] == "to-atlas"


def test_the_subject_cache_notices_a_replaced_file_and_another_network_depth(dataset, tmp_path):
    import shutil
    import time

    folder = tmp_path / "data"
    shutil.copytree(dataset, folder)
    sources = [training.SubjectSource("b", str(folder / "b_norm.nii.gz"), None)]
    atlas = folder / "a_norm.nii.gz"
    first = training.prepare_all(sources, atlas, tiny_config(), tmp_path / "cache", False, align=False, log=lambda m: None)[0]
    time.sleep(0.01)
    sitk.WriteImage(blob_volume(size=(40, 36, 32), seed=5) * 0.5, str(folder / "b_norm.nii.gz"))  # same path, new content
    second = training.prepare_all(sources, atlas, tiny_config(), tmp_path / "cache", False, align=False, log=lambda m: None)[0]
    assert not np.allclose(first.image, second.image)
    deeper = ModelConfig(encoder_features=[8, 16, 16, 16, 16], decoder_features=[16, 16, 16], svf_level=1, spacing=[2.0, 2.0, 2.0])
    third = training.prepare_all(sources, atlas, deeper, tmp_path / "cache", False, align=False, log=lambda m: None)[0]
    assert all(n % 16 == 0 for n in third.image.shape)


def test_cli_train_aligns_subjects_to_the_atlas_and_strips_the_skull(dataset, tmp_path):
    """The command line's defaults: every subject affinely aligned to --atlas; --skull-strip-labels
    removes extra-cerebral labels (here a 'skull' 515 and extra-cerebral CSF 24) before training."""
    import shutil

    import torch

    folder = tmp_path / "data"
    shutil.copytree(dataset, folder)
    atlas = sitk.ReadImage(str(folder / "a_norm.nii.gz"))
    moved = shifted(atlas, (4.0, -3.0, 2.0))  # 5.4 mm off the atlas
    labels = sitk.GetArrayFromImage(blob_labels(moved)).astype(np.int16)
    labels[(labels == 1)] = 515  # the outer band: a "skull"
    labels[(labels == 2)] = 24
    labels[(labels == 0)] = 0
    head = sitk.GetImageFromArray(labels)
    head.CopyInformation(moved)
    sitk.WriteImage(moved, str(folder / "d_norm.nii.gz"))
    sitk.WriteImage(head, str(folder / "d_seg.nii.gz"))
    sources = [training.SubjectSource("d", str(folder / "d_norm.nii.gz"), str(folder / "d_seg.nii.gz"))]
    config = tiny_config()
    aligned = training.prepare_all(sources, folder / "a_norm.nii.gz", config, tmp_path / "cache", True, align=True, log=lambda m: None)[0]
    unaligned = training.prepare_all(sources, folder / "a_norm.nii.gz", config, tmp_path / "cache", True, align=False, log=lambda m: None)[0]
    reference = training.prepare_all([training.SubjectSource("a", str(folder / "a_norm.nii.gz"), None)], folder / "a_norm.nii.gz", config, tmp_path / "cache", True, align=False, log=lambda m: None)[0]
    error = lambda s: float(np.abs(s.image - reference.image).mean())  # noqa: E731
    assert error(aligned) < 0.5 * error(unaligned)  # the affine brought it onto the atlas
    assert set(np.unique(aligned.labels)) == {0, 3}  # skull and extra-cerebral CSF stripped
    code = main([
        "train", "--data", str(folder / "train.csv"), "--atlas", str(folder / "a_norm.nii.gz"), "--out", str(tmp_path / "run"),
        "--steps", "2", "--skull-strip-labels", "--quiet", "--cache", str(tmp_path / "cache2"),
    ])
    assert code == 0
    payload = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert payload["step"] == 2 and payload["config"]["training"]["options"]["skull_strip_labels"] is True
