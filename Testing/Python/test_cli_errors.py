"""Bad input: one line naming the problem, a non-zero exit, no traceback, no half-written files."""

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import ROOT, blob_labels, blob_volume

from VoxelMorphRegLib.checkpoint import ModelConfig, save_checkpoint
from VoxelMorphRegLib.frontends.cli import main


@pytest.fixture
def good(tmp_path):
    fixed = blob_volume(size=(24, 24, 24))
    path = tmp_path / "fixed.nii.gz"
    sitk.WriteImage(fixed, str(path))
    return path


def run_cli(capsys, *args):
    code = main(list(map(str, args)) + ["--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    assert len(err) == 1 and err[0].startswith("voxelmorphreg: error: "), err
    for fragment in fragments:
        assert fragment in err[0], err[0]


def write(tmp_path, name, array, spacing=None):
    image = sitk.GetImageFromArray(array, isVector=array.ndim == 4 and array.shape[-1] == 3)
    if spacing:
        image.SetSpacing(spacing)
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    return path


def garbage(path):
    path.write_bytes(b"not an image at all")
    return path


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda t: write(t, "flat.nii.gz", np.random.rand(20, 20).astype(np.float32)), "is 2D"),
        (lambda t: write(t, "vector.nii.gz", np.random.rand(8, 8, 8, 3).astype(np.float32)), "3 components per voxel"),
        (lambda t: write(t, "constant.nii.gz", np.full((8, 8, 8), 5, np.float32)), "constant"),
        (lambda t: write(t, "nan.mha", np.where(np.random.rand(8, 8, 8) > 0.9, np.nan, 1.0).astype(np.float32)), "NaN"),
        (lambda t: t / "missing.nii.gz", "no such file"),
        (lambda t: garbage(t / "garbage.nii.gz"), "cannot be read"),
    ],
)
def test_bad_moving_image(tmp_path, capsys, good, make, fragment):
    bad = make(tmp_path)
    code, err = run_cli(capsys, "register", good, bad, "--out", tmp_path / "out", "--model", "none")
    assert_one_line_error(code, err, fragment, str(bad))
    assert not (tmp_path / "out" / "warped.nii.gz").exists()


def test_4d_image_is_refused(tmp_path, capsys, good):
    image = sitk.JoinSeries([blob_volume(size=(8, 8, 8)), blob_volume(size=(8, 8, 8), seed=1)])
    path = tmp_path / "series.nii.gz"
    sitk.WriteImage(image, str(path))
    code, err = run_cli(capsys, "register", good, path, "--out", tmp_path / "out", "--model", "none")
    assert_one_line_error(code, err, "4D")


def test_label_grid_must_match_its_image(tmp_path, capsys, good):
    labels = blob_labels(blob_volume(size=(20, 24, 24)))
    path = tmp_path / "labels.nii.gz"
    sitk.WriteImage(labels, str(path))
    code, err = run_cli(capsys, "register", good, good, "--out", tmp_path / "out", "--model", "none", "--moving-labels", path)
    assert_one_line_error(code, err, "label grid", "differs")


def test_missing_and_corrupt_models(tmp_path, capsys, good):
    code, err = run_cli(capsys, "register", good, good, "--out", tmp_path / "out", "--model", tmp_path / "nope.pt")
    assert_one_line_error(code, err, "nope.pt", "not found")
    config = ModelConfig(encoder_features=[4, 8, 8], decoder_features=[8])
    model = tmp_path / "model.pt"
    save_checkpoint(model, config.build(), config)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    code, err = run_cli(capsys, "register", good, good, "--out", tmp_path / "out", "--model", truncated)
    assert_one_line_error(code, err, "truncated.pt", "not a readable")
    odd = tmp_path / "odd_defaults.pt"
    config = ModelConfig(encoder_features=[4, 8, 8], decoder_features=[8], default_refine_smoothness=-1.0)
    save_checkpoint(odd, config.build(), config)
    code, err = run_cli(capsys, "register", good, good, "--out", tmp_path / "out", "--model", odd)
    assert_one_line_error(code, err, "odd_defaults.pt", "default_refine_smoothness must be")


def test_a_model_that_pickles_code_is_refused(tmp_path, capsys, good):
    evil = tmp_path / "evil.pt"
    torch.save({"format": "voxelmorphreg-checkpoint", "config": {}, "state_dict": {}, "payload": ModelConfig()}, evil)
    code, err = run_cli(capsys, "register", good, good, "--out", tmp_path / "out", "--model", evil)
    assert_one_line_error(code, err, "evil.pt")


def test_mismatched_weights_name_the_file(tmp_path, capsys, good):
    config = ModelConfig(encoder_features=[4, 8, 8], decoder_features=[8])
    network = config.build()
    config.encoder_features = [8, 8, 8]  # the weights no longer fit the stated architecture
    path = tmp_path / "mismatch.pt"
    save_checkpoint(path, network, config)
    code, err = run_cli(capsys, "register", good, good, "--out", tmp_path / "out", "--model", path)
    assert_one_line_error(code, err, "mismatch.pt", "do not match")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda(tmp_path, capsys, good):
    code, err = run_cli(capsys, "register", good, good, "--out", tmp_path / "out", "--model", "none", "--device", "cuda")
    assert_one_line_error(code, err, "CUDA")


def test_output_folder_that_cannot_be_written(tmp_path, capsys, good):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, err = run_cli(capsys, "register", good, good, "--out", blocker / "out", "--model", "none")
    assert_one_line_error(code, err, "output folder cannot be written")


def test_cuda_out_of_memory_falls_back_to_the_cpu(monkeypatch, good):
    from VoxelMorphRegLib.pipelines import register as pipeline

    real = pipeline._velocity_and_flows
    calls = []

    def flaky(*args, **kwargs):
        calls.append(args[3])  # the device
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_velocity_and_flows", flaky)
    messages = []
    image = sitk.ReadImage(str(good), sitk.sitkFloat32)
    result = pipeline.register_images(image, image, pipeline.RegisterOptions(model="none", affine=False, refine_iterations=2), log=messages.append)
    assert len(calls) == 2 and calls[1].type == "cpu"
    assert result.metrics["device"] == "cpu" and "fell back to the CPU" in result.metrics["fallback"]
    assert any("fell back to the CPU" in m for m in messages)


def test_a_failed_write_leaves_no_file_that_looks_valid(tmp_path, monkeypatch, good):
    from VoxelMorphRegLib.image import io

    real = sitk.WriteImage

    def half_then_fail(image, path, *args, **kwargs):
        real(image, path, *args, **kwargs)
        with open(path, "r+b") as handle:
            handle.truncate(100)
        raise RuntimeError("disk full")

    image = sitk.ReadImage(str(good))
    folder = tmp_path / "results"
    folder.mkdir()
    monkeypatch.setattr(io.sitk, "WriteImage", half_then_fail)
    with pytest.raises(Exception, match="cannot be written"):
        io.write_image(image, folder / "result.nii.gz")
    assert list(folder.iterdir()) == []


def test_expected_faults_print_no_traceback_in_a_real_process(tmp_path, good):
    result = subprocess.run(
        [sys.executable, "-m", "VoxelMorphRegLib.frontends.cli", "register", str(good), str(tmp_path / "absent.nii.gz"), "--out", str(tmp_path / "o"), "--quiet"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"voxelmorphreg: error: moving image {tmp_path / 'absent.nii.gz'}: no such file or folder"]


def test_refinement_counts_are_checked(tmp_path, capsys, good):
    code, err = run_cli(capsys, "register", good, good, "--out", tmp_path / "out", "--model", "none", "--refine", "-5")
    assert_one_line_error(code, err, "--refine must be >= 0")
    code, err = run_cli(capsys, "register", good, good, "--out", tmp_path / "out", "--model", "none", "--refine", "0")
    assert_one_line_error(code, err, "--model none", "--refine N")
    code, err = run_cli(capsys, "register", good, good, "--out", tmp_path / "out", "--model", "none", "--refine-smoothness", "-1")
    assert_one_line_error(code, err, "--refine-smoothness must be a finite number >= 0")
    code, err = run_cli(capsys, "register", good, good, "--out", tmp_path / "out", "--model", "none", "--refine-learning-rate", "0")
    assert_one_line_error(code, err, "--refine-learning-rate must be a finite number > 0")


def test_label_values_beyond_32_bits_are_refused(tmp_path, capsys, good):
    image = sitk.ReadImage(str(good))
    labels = sitk.Cast(image > 0.2, sitk.sitkUInt32) * 3_000_000_000
    path = tmp_path / "big_labels.nrrd"
    sitk.WriteImage(labels, str(path))
    code, err = run_cli(capsys, "register", good, good, "--out", tmp_path / "out", "--model", "none", "--moving-labels", path)
    assert_one_line_error(code, err, "do not fit 32-bit integers")


def test_train_rejects_an_impossible_svf_level(tmp_path, capsys, good):
    code, err = run_cli(capsys, "train", "--data", tmp_path, "--atlas", good, "--out", tmp_path / "run", "--svf-level", "4")
    assert_one_line_error(code, err, "--svf-level")
