"""End to end through the command line: files, geometry of every output, the ITK contract, labels, metrics."""

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ROOT, blob_labels, blob_volume, rotation

from VoxelMorphRegLib.checkpoint import ModelConfig, save_checkpoint
from VoxelMorphRegLib.frontends.cli import main
from VoxelMorphRegLib.image.io import same_grid

SHIFT_MM = np.array([3.0, 0.0, -2.0])  # LPS


def shifted(image: sitk.Image, shift) -> sitk.Image:
    """``moving(q) = image(q - shift)``: the anatomy moved by +shift, so fixed point p sits at p + shift in moving."""
    transform = sitk.TranslationTransform(3, (-np.asarray(shift)).tolist())
    return sitk.Resample(image, image, transform, sitk.sitkLinear, 0.0)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pair")
    fixed = blob_volume(size=(40, 36, 32), spacing=(1.2, 1.0, 1.4), direction=rotation(0.2, 0.1, -0.3), origin=(5.0, 2.0, -3.0))
    moving = shifted(fixed, SHIFT_MM)
    paths = {}
    for name, image in [("fixed", fixed), ("moving", moving), ("fixed_labels", blob_labels(fixed)), ("moving_labels", blob_labels(moving))]:
        paths[name] = str(folder / f"{name}.nii.gz")
        sitk.WriteImage(image, paths[name])
    return paths


@pytest.fixture(scope="module")
def registered(pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    code = main([
        "register", pair["fixed"], pair["moving"], "--out", str(out), "--model", "none", "--no-affine", "--refine", "150",
        "--refine-smoothness", "1",  # a pure translation: a smooth field is the right answer
        "--moving-labels", pair["moving_labels"], "--fixed-labels", pair["fixed_labels"], "--quiet",
    ])
    assert code == 0
    return out


def test_every_output_is_written_on_the_right_grid(pair, registered):
    fixed, moving = sitk.ReadImage(pair["fixed"]), sitk.ReadImage(pair["moving"])
    for name in ["warped.nii.gz", "warped_labels.nii.gz", "displacement.nii.gz", "jacobian.nii.gz"]:
        assert same_grid(sitk.ReadImage(str(registered / name)), fixed), name
    assert same_grid(sitk.ReadImage(str(registered / "inverse_displacement.nii.gz")), moving)
    field = sitk.ReadImage(str(registered / "displacement.nii.gz"))
    assert field.GetNumberOfComponentsPerPixel() == 3 and field.GetPixelID() == sitk.sitkVectorFloat32
    vectors = sitk.GetArrayViewFromImage(field).astype(np.float64) * 1024  # rounded to 1/1024 mm: float32 lost nothing
    assert np.abs(vectors).max() > 1 and np.array_equal(vectors, np.round(vectors))
    assert (registered / "qc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(registered.glob("*.tmp*")), "temporary files left behind"


def test_displacement_points_from_fixed_to_moving_in_lps_mm(pair, registered):
    field = sitk.GetArrayFromImage(sitk.ReadImage(str(registered / "displacement.nii.gz")))
    body = sitk.GetArrayFromImage(sitk.ReadImage(pair["fixed"])) > 0.2
    median = np.median(field[body], axis=0)
    assert np.allclose(median, SHIFT_MM, atol=0.8), median  # the sign, the order x,y,z and the units


def test_itk_resampling_through_the_field_gives_the_warped_image(pair, registered):
    fixed, moving = sitk.ReadImage(pair["fixed"], sitk.sitkFloat32), sitk.ReadImage(pair["moving"], sitk.sitkFloat32)
    field = sitk.ReadImage(str(registered / "displacement.nii.gz"), sitk.sitkVectorFloat64)
    again = sitk.Resample(moving, fixed, sitk.DisplacementFieldTransform(field), sitk.sitkLinear, 0.0)
    warped = sitk.ReadImage(str(registered / "warped.nii.gz"))
    assert np.allclose(sitk.GetArrayFromImage(again), sitk.GetArrayFromImage(warped), atol=1e-5)
    before = np.abs(sitk.GetArrayFromImage(moving) - sitk.GetArrayFromImage(fixed)).mean()
    after = np.abs(sitk.GetArrayFromImage(warped) - sitk.GetArrayFromImage(fixed)).mean()
    assert after < 0.5 * before


def test_labels_are_carried_without_new_values_and_dice_improves(pair, registered):
    warped = sitk.GetArrayFromImage(sitk.ReadImage(str(registered / "warped_labels.nii.gz")))
    assert set(np.unique(warped)) <= {0, 1, 2, 3}
    metrics = json.loads((registered / "metrics.json").read_text())
    dice = metrics["dice"]
    assert dice["labels"] == [1, 2, 3]
    assert dice["mean_after"] > dice["mean_before"] + 0.1
    assert dice["mean_after"] > 0.8


def test_metrics_report_time_device_and_folding(registered):
    metrics = json.loads((registered / "metrics.json").read_text())
    assert metrics["device"] == "cpu"
    seconds = metrics["seconds"]
    sequential = ["read", "model", "brain_mask", "model_grid", "refine", "integration", "field", "warp", "metrics"]
    assert all(seconds[stage] >= 0 for stage in sequential + ["write", "qc", "qc_wait"])
    # the stages run one after the other; total is the time to the committed result, which does not
    # wait for the QC figure (drawn beside the writes, added to the set after the commit)
    assert sum(seconds[stage] for stage in sequential) + seconds["write"] <= seconds["total"] + 0.05
    assert seconds["total"] <= sum(seconds[stage] for stage in sequential) + seconds["write"] + 1.0
    assert "qc.png" in metrics["files"]
    assert 0 <= metrics["folding_fraction"] < 0.001
    assert metrics["std_log_jacobian"] < 0.2
    jac = sitk.GetArrayFromImage(sitk.ReadImage(str(registered / "jacobian.nii.gz")))
    assert abs(np.median(jac) - 1) < 0.05  # a translation keeps volumes


def test_inverse_displacement_brings_moving_back(pair, registered):
    _fixed, moving = sitk.ReadImage(pair["fixed"], sitk.sitkFloat32), sitk.ReadImage(pair["moving"], sitk.sitkFloat32)
    inverse = sitk.GetArrayFromImage(sitk.ReadImage(str(registered / "inverse_displacement.nii.gz")))
    body = sitk.GetArrayFromImage(moving) > 0.2
    assert np.allclose(np.median(inverse[body], axis=0), -SHIFT_MM, atol=0.8)


def test_a_model_file_is_loaded_and_run(pair, tmp_path):
    model = tmp_path / "tiny.pt"
    config = ModelConfig(encoder_features=[4, 8, 8], decoder_features=[8], svf_level=1, spacing=[2.0, 2.0, 2.0])
    save_checkpoint(model, config.build(), config)
    out = tmp_path / "out"
    assert main(["register", pair["fixed"], pair["moving"], "--out", str(out), "--model", str(model), "--no-qc", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == str(model) and metrics["model_grid"]["spacing"] == [2.0, 2.0, 2.0]
    assert metrics["model_grid"]["orientation"] == "LIA"
    assert not (out / "qc.png").exists()


def test_progress_goes_to_stderr_and_quiet_silences_it(pair, tmp_path):
    env_cmd = [sys.executable, "-m", "VoxelMorphRegLib.frontends.cli", "register", pair["fixed"], pair["moving"], "--model", "none", "--no-affine", "--refine", "5", "--no-qc"]
    loud = subprocess.run(env_cmd + ["--out", str(tmp_path / "a")], capture_output=True, text=True, cwd=ROOT)
    assert loud.returncode == 0, loud.stderr
    assert "[100%] done" in loud.stderr and loud.stdout == ""
    quiet = subprocess.run(env_cmd + ["--out", str(tmp_path / "b"), "--quiet"], capture_output=True, text=True, cwd=ROOT)
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_the_model_sets_the_default_refinement_and_refine_overrides_it(pair, tmp_path):
    model = tmp_path / "refining.pt"
    config = ModelConfig(encoder_features=[4, 8, 8], decoder_features=[8], svf_level=1, default_refine_iterations=3)
    save_checkpoint(model, config.build(), config)
    for extra, expected in [([], 3), (["--refine", "0"], 0), (["--refine", "2"], 2)]:
        out = tmp_path / f"out{expected}"
        assert main(["register", pair["fixed"], pair["moving"], "--out", str(out), "--model", str(model), "--no-affine", "--no-qc", "--quiet", *extra]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["refine_iterations"] == expected
        assert ("refine" in metrics["seconds"]) == (expected > 0)


def test_the_model_sets_the_refinement_weights_and_the_options_override_them(pair, tmp_path):
    model = tmp_path / "weights.pt"
    config = ModelConfig(encoder_features=[4, 8, 8], decoder_features=[8], svf_level=1, default_refine_iterations=2,
                         default_refine_smoothness=0.25, default_refine_learning_rate=0.05)
    save_checkpoint(model, config.build(), config)
    common = ["register", pair["fixed"], pair["moving"], "--model", str(model), "--no-affine", "--no-qc", "--quiet"]
    assert main(common + ["--out", str(tmp_path / "a")]) == 0
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert (metrics["refine_smoothness"], metrics["refine_learning_rate"]) == (0.25, 0.05)
    assert main(common + ["--out", str(tmp_path / "b"), "--refine-smoothness", "2", "--refine-learning-rate", "0.01"]) == 0
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert (metrics["refine_smoothness"], metrics["refine_learning_rate"]) == (2.0, 0.01)


def test_the_models_refinement_weights_reach_the_optimiser(pair, tmp_path, monkeypatch):
    from VoxelMorphRegLib.pipelines import register

    model = tmp_path / "weights.pt"
    config = ModelConfig(encoder_features=[4, 8, 8], decoder_features=[8], svf_level=1, default_refine_iterations=2,
                         default_refine_smoothness=0.25, default_refine_learning_rate=0.05)
    save_checkpoint(model, config.build(), config)
    seen = []
    real = register.refine_velocity

    def recording(*args, **kwargs):
        seen.append((args[4], kwargs["smoothness_weight"], kwargs["learning_rate"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(register, "refine_velocity", recording)
    assert main(["register", pair["fixed"], pair["moving"], "--model", str(model), "--no-affine", "--no-qc", "--quiet", "--out", str(tmp_path / "a")]) == 0
    assert seen == [(2, 0.25, 0.05)]


def test_the_smoothness_weight_changes_the_refined_field(pair, tmp_path):
    """A heavier smoothness weight must give a smoother (smaller-gradient) refined displacement."""
    spread = {}
    for weight in ("0", "50"):
        out = tmp_path / f"w{weight}"
        assert main(["register", pair["fixed"], pair["moving"], "--out", str(out), "--model", "none", "--no-affine", "--refine", "40",
                     "--refine-smoothness", weight, "--no-qc", "--quiet"]) == 0
        spread[weight] = json.loads((out / "metrics.json").read_text())["std_log_jacobian"]
    assert spread["50"] < 0.8 * spread["0"]


def test_a_rerun_into_the_same_folder_leaves_no_stale_outputs(pair, tmp_path):
    out = tmp_path / "out"
    common = ["register", pair["fixed"], pair["moving"], "--out", str(out), "--model", "none", "--no-affine", "--refine", "3", "--quiet"]
    assert main(common + ["--moving-labels", pair["moving_labels"]]) == 0
    assert (out / "warped_labels.nii.gz").exists() and (out / "qc.png").exists()
    assert main(common + ["--no-qc"]) == 0
    assert not (out / "warped_labels.nii.gz").exists() and not (out / "qc.png").exists()
