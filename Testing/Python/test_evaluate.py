"""``voxelmorphreg evaluate``: known answers for Dice and HD95, every output file, every method, the
optional ANTs baseline skipped cleanly without antspyx, one-line errors."""

import argparse
import csv
import json
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import blob_labels, blob_volume, rotation

from VoxelMorphRegLib.checkpoint import ModelConfig, save_checkpoint
from VoxelMorphRegLib.errors import VoxelMorphRegError
from VoxelMorphRegLib.pipelines import evaluate, evaluation_methods
from VoxelMorphRegLib.pipelines.surface_metrics import hd95_per_label

SPACING = (1.5, 1.0, 1.25)  # (i, j, k) mm: anisotropic, so that HD95 must use the right axis
SHIFT_VOXELS = 2  # label 1 of subject "b" is label 1 of "a" moved 2 voxels along i
CUBE = 12  # voxels per side of label 1


def run_evaluate(argv, messages=None):
    """``voxelmorphreg evaluate ARGV`` through the module's own sub-parser (as cli.py wires it)."""
    parser = argparse.ArgumentParser(prog="voxelmorphreg")
    evaluate.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["evaluate", *argv])
    return evaluate.run(args, (messages.append if messages is not None else lambda message: None))


def write_subject(folder, name, labels: np.ndarray, spacing=SPACING, seed=0):
    """``NAME_norm.nii.gz`` (a non-constant image) and ``NAME_seg.nii.gz`` on one grid."""
    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray((0.3 * labels + 0.05 * rng.random(labels.shape)).astype(np.float32))
    label_image = sitk.GetImageFromArray(labels.astype(np.int16))
    for item in (image, label_image):
        item.SetSpacing(spacing)
        item.SetOrigin((4.0, -7.0, 2.0))
    sitk.WriteImage(image, str(folder / f"{name}_norm.nii.gz"))
    sitk.WriteImage(label_image, str(folder / f"{name}_seg.nii.gz"))


def cube_labels(shift_i: int = 0) -> np.ndarray:
    """[k, j, i] map: label 1 a 12^3 cube (moved by ``shift_i`` voxels along i), label 2 a fixed block."""
    labels = np.zeros((32, 32, 32), np.int16)
    labels[6 : 6 + CUBE, 6 : 6 + CUBE, 6 + shift_i : 6 + CUBE + shift_i] = 1
    labels[22:28, 22:28, 4:10] = 2
    return labels


@pytest.fixture(scope="module")
def cube_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cubes")
    write_subject(folder, "a", cube_labels(), seed=1)
    write_subject(folder, "acopy", cube_labels(), seed=2)
    write_subject(folder, "b", cube_labels(SHIFT_VOXELS), seed=3)
    return folder


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------- HD95 on its own


def test_hd95_of_a_shifted_cube_is_the_shift_in_mm():
    a = cube_labels()
    b = cube_labels(SHIFT_VOXELS)
    spacing_kji = SPACING[::-1]
    scores = hd95_per_label(b, a, [1, 2], spacing_kji)
    assert scores[1] == pytest.approx(SHIFT_VOXELS * SPACING[0], abs=1e-4)  # 3 mm: i spacing, not j or k
    assert scores[2] == pytest.approx(0.0, abs=1e-6)
    # the same shift along k is measured with k's spacing
    c = np.roll(a, 3, axis=0)
    assert hd95_per_label(c, a, [1], spacing_kji)[1] == pytest.approx(3 * SPACING[2], abs=1e-4)
    # a label in one map only: NaN; in neither: left out
    only_a = a.copy()
    only_a[only_a == 2] = 0
    scores = hd95_per_label(only_a, a, [1, 2, 7], spacing_kji)
    assert np.isnan(scores[2]) and 7 not in scores


# --------------------------------------------------------------------------- known answers through evaluate


def test_dice_and_hd95_of_none_match_the_hand_computed_values(cube_set, tmp_path):
    out = tmp_path / "out"
    messages = []
    summary = run_evaluate(["--data", str(cube_set), "--out", str(out), "--methods", "none"], messages)
    rows = {(r["fixed"], r["moving"]): r for r in read_csv(out / "results.csv")}
    assert len(rows) == 6  # every ordered pair of 3 subjects
    assert set(read_csv(out / "results.csv")[0]) >= {"fixed", "moving", "method", "mean_dice", "hd95_mm", "folding_fraction", "std_log_jacobian", "seconds", "dice_1", "dice_2", "hd95_1", "hd95_2"}

    # identical subjects: perfect overlap, no distance
    same = rows[("a_norm", "acopy_norm")]
    assert float(same["mean_dice"]) == pytest.approx(1.0)
    assert float(same["hd95_mm"]) == pytest.approx(0.0)

    # label 1 shifted by 2 of 12 voxels: Dice = 2 * 10 / (12 + 12) = (12 - 2) / 12; label 2 untouched
    cube_dice = (CUBE - SHIFT_VOXELS) / CUBE
    for pair in [("a_norm", "b_norm"), ("b_norm", "a_norm")]:
        row = rows[pair]
        assert float(row["dice_1"]) == pytest.approx(cube_dice, abs=1e-6)
        assert float(row["dice_2"]) == pytest.approx(1.0)
        assert float(row["mean_dice"]) == pytest.approx((cube_dice + 1.0) / 2, abs=1e-6)
        assert float(row["hd95_1"]) == pytest.approx(SHIFT_VOXELS * SPACING[0], abs=1e-4)  # 3 mm
        assert float(row["hd95_mm"]) == pytest.approx(SHIFT_VOXELS * SPACING[0] / 2, abs=1e-4)  # mean over the 2 labels
        assert float(row["folding_fraction"]) == 0.0 and float(row["std_log_jacobian"]) == 0.0

    # the summary is the mean over the 6 pairs: 2 identical pairs, 4 shifted ones
    expected = (2 * 1.0 + 4 * (cube_dice + 1.0) / 2) / 6
    assert summary["summary"]["none"]["mean_dice"] == pytest.approx(expected, abs=1e-6)
    assert summary["labels"] == [1, 2]
    assert any("[pair 6/6]" in m for m in messages), "each pair's progress goes to the log"


def test_labels_file_selects_the_labels_and_max_pairs_limits_the_pairs(cube_set, tmp_path):
    label_file = tmp_path / "labels.json"
    label_file.write_text(json.dumps([1, 99]))
    messages = []
    summary = run_evaluate(["--data", str(cube_set), "--out", str(tmp_path / "out"), "--methods", "none", "--labels", str(label_file), "--max-pairs", "2"], messages)
    rows = read_csv(tmp_path / "out" / "results.csv")
    assert len(rows) == 2 and summary["labels"] == [1]
    assert "dice_1" in rows[0] and "dice_2" not in rows[0] and "dice_99" not in rows[0]
    assert any("99" in m and "left out" in m for m in messages)
    shifted = [r for r in rows if "b_norm" in (r["fixed"], r["moving"])]
    assert float(shifted[0]["mean_dice"]) == pytest.approx((CUBE - SHIFT_VOXELS) / CUBE, abs=1e-6)


def test_a_label_in_one_map_only_is_counted_not_hidden(tmp_path):
    """HD95 is undefined for a structure a method lost: the mean leaves it out, and evaluate says how many."""
    folder = tmp_path / "data"
    folder.mkdir()
    write_subject(folder, "a", cube_labels(), seed=1)
    without_block = cube_labels()
    without_block[without_block == 2] = 0  # label 2 lost
    write_subject(folder, "c", without_block, seed=2)
    label_file = tmp_path / "labels.json"
    label_file.write_text(json.dumps([1, 2]))
    out = tmp_path / "out"
    summary = run_evaluate(["--data", str(folder), "--out", str(out), "--methods", "none", "--labels", str(label_file)])
    rows = read_csv(out / "results.csv")
    assert len(rows) == 2
    for row in rows:
        assert row["hd95_2"] == "" and float(row["hd95_1"]) == pytest.approx(0.0)
        assert float(row["hd95_mm"]) == pytest.approx(0.0)  # label 1 only
        assert float(row["dice_2"]) == pytest.approx(0.0) and float(row["mean_dice"]) == pytest.approx(0.5)
    assert summary["summary"]["none"]["labels_lost"] == 2
    assert json.loads((out / "summary.json").read_text())["methods"]["none"]["labels_lost"] == 2
    assert "none lost or invented 2 label(s)" in summary["table"]
    assert "2 label(s) in one map only" in read_csv(out / "summary.csv")[0]["note"]


# --------------------------------------------------------------------------- every method, every output


@pytest.fixture(scope="module")
def blob_set(tmp_path_factory):
    """Two subjects, the second the first moved by a few mm, on an oblique, anisotropic 32^3 grid; a tiny random model."""
    folder = tmp_path_factory.mktemp("blobs")
    base = blob_volume(size=(32, 32, 32), spacing=(1.5, 1.4, 1.6), direction=rotation(0.2, 0.1, -0.3), origin=(5.0, 2.0, -3.0))
    for name, shift in [("s0", (0.0, 0.0, 0.0)), ("s1", (3.0, 0.0, -2.5))]:
        image = sitk.Resample(base, base, sitk.TranslationTransform(3, [-v for v in shift]), sitk.sitkLinear, 0.0)
        sitk.WriteImage(image, str(folder / f"{name}_norm.nii.gz"))
        sitk.WriteImage(blob_labels(image), str(folder / f"{name}_seg.nii.gz"))
    torch.manual_seed(0)
    config = ModelConfig(encoder_features=[4, 8, 8], decoder_features=[8], svf_level=1)
    model = save_checkpoint(folder / "tiny.pt", config.build(), config)
    return folder, model


def test_network_refine_runs_the_models_own_refinement_unless_told_otherwise(blob_set, tmp_path):
    folder, _ = blob_set
    model = tmp_path / "refining.pt"
    config = ModelConfig(encoder_features=[4, 8, 8], decoder_features=[8], svf_level=1, default_refine_iterations=2, default_refine_smoothness=0.5)
    save_checkpoint(model, config.build(), config)
    common = ["--data", str(folder), "--model", str(model), "--device", "cpu", "--methods", "network+refine", "--max-pairs", "1", "--no-affine"]
    run_evaluate(common + ["--out", str(tmp_path / "a")])
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["refinement"] == {"iterations": 2, "smoothness": 0.5, "learning_rate": 0.1, "coarse_fraction": 0.0, "coarse_iterations": 0, "fine_iterations": 2}
    run_evaluate(common + ["--out", str(tmp_path / "b"), "--refine", "3", "--refine-smoothness", "2"])
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["refinement"] == {"iterations": 3, "smoothness": 2.0, "learning_rate": 0.1, "coarse_fraction": 0.0, "coarse_iterations": 0, "fine_iterations": 3}


def test_network_refine_hands_its_settings_to_the_registration(blob_set, tmp_path, monkeypatch):
    """What summary.json reports is what register_images actually ran."""
    from VoxelMorphRegLib.pipelines import register

    folder, model = blob_set
    seen = []
    real = register.register_images

    def recording(fixed, moving, options, *args, **kwargs):
        seen.append((options.refine_iterations, options.refine_smoothness, options.refine_learning_rate))
        return real(fixed, moving, options, *args, **kwargs)

    monkeypatch.setattr(register, "register_images", recording)
    run_evaluate(["--data", str(folder), "--out", str(tmp_path / "out"), "--model", str(model), "--device", "cpu", "--no-affine",
                  "--methods", "network,network+refine", "--max-pairs", "1", "--refine", "2", "--refine-smoothness", "0.7", "--refine-learning-rate", "0.03"])
    assert seen == [(0, None, None), (2, 0.7, 0.03)]  # network alone, then the refinement with the given settings


def test_every_method_runs_and_every_output_is_written(blob_set, tmp_path, capsys):
    folder, model = blob_set
    out = tmp_path / "out"
    messages = []
    summary = run_evaluate([
        "--data", str(folder), "--out", str(out), "--model", str(model), "--device", "cpu", "--refine", "3",
        "--methods", "none,affine,network,network+refine,ants", "--max-pairs", "1",
    ], messages)
    methods = ["none", "affine", "network", "network+refine", "ants"]
    ants_available = evaluate._import_ants()[0] is not None

    # the printed table: a header and one row per requested method, in order
    table = capsys.readouterr().out
    assert "mean Dice" in table and "HD95" in table and "folded %" in table and "std log detJ" in table and "s/pair" in table
    table_methods = [line.split("|")[1].strip() for line in table.strip().splitlines()[2:]]
    assert table_methods == methods

    rows = read_csv(out / "results.csv")
    ran = methods if ants_available else methods[:-1]
    assert [r["method"] for r in rows] == ran
    by_method = {r["method"]: r for r in rows}
    for row in rows:
        assert 0.0 <= float(row["mean_dice"]) <= 1.0 and float(row["hd95_mm"]) >= 0.0
        assert 0.0 <= float(row["folding_fraction"]) <= 1.0 and float(row["std_log_jacobian"]) >= 0.0 and float(row["seconds"]) >= 0.0
        assert {"dice_1", "dice_2", "dice_3", "hd95_1", "hd95_2", "hd95_3"} <= set(row)
    # a translation of a few mm: every registration beats doing nothing
    for method in ran[1:]:
        assert float(by_method[method]["mean_dice"]) > float(by_method["none"]["mean_dice"]) + 0.1, method
    assert float(by_method["affine"]["std_log_jacobian"]) == 0.0 and float(by_method["affine"]["folding_fraction"]) == 0.0

    assert [r["method"] for r in read_csv(out / "summary.csv")] == methods
    assert (out / "boxplot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "summary.json").read_text())
    assert list(report["methods"]) == methods and report["labels"] == [1, 2, 3]
    assert set(report["definitions"]) == {"dice", "hd95_mm", "folding_fraction", "std_log_jacobian", "labels_lost", "seconds"}
    for method in ran:
        assert set(report["methods"][method]) >= {"pairs", "mean_dice", "mean_dice_std", "hd95_mm", "folding_percent", "std_log_jacobian", "seconds_per_pair", "dice_per_label"}
    if not ants_available:
        assert "antspyx" in report["methods"]["ants"]["skipped"]
    assert not list(out.glob("*.tmp*")), "temporary files left behind"
    assert summary["table"] in table


def test_missing_antspyx_skips_ants_with_a_note(cube_set, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ants", None)  # `import ants` now raises ImportError
    out = tmp_path / "out"
    messages = []
    run_evaluate(["--data", str(cube_set), "--out", str(out), "--methods", "none,ants", "--max-pairs", "1"], messages)
    table = capsys.readouterr().out
    ants_line = next(line for line in table.splitlines() if line.startswith("| ants"))
    assert "skipped" in ants_line and "antspyx" in ants_line
    assert any("ants skipped" in m and "antspyx" in m for m in messages)
    assert [r["method"] for r in read_csv(out / "results.csv")] == ["none"]
    summary_rows = {r["method"]: r for r in read_csv(out / "summary.csv")}
    assert "antspyx" in summary_rows["ants"]["note"] and summary_rows["ants"]["pairs"] == "0"
    report = json.loads((out / "summary.json").read_text())
    assert "antspyx" in report["methods"]["ants"]["skipped"] and any("antspyx" in n for n in report["notes"])
    # nothing left to run: a one-line error, not an empty table
    with pytest.raises(VoxelMorphRegError, match="no requested method can run"):
        run_evaluate(["--data", str(cube_set), "--out", str(out), "--methods", "ants"])


# --------------------------------------------------------------------------- errors


def test_errors_are_one_line(cube_set, tmp_path):
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    write_subject(lonely, "only", cube_labels())
    cases = [
        (["--data", str(lonely)], "at least 2 subjects"),
        (["--data", str(cube_set), "--labels", str(tmp_path / "missing.json")], "label file not found"),
        (["--data", str(cube_set), "--methods", "none,elastix"], "unknown method 'elastix'"),
        (["--data", str(cube_set), "--methods", "network+refine", "--refine", "0"], "--refine must be >= 1"),
        (["--data", str(cube_set), "--max-pairs", "0"], "--max-pairs must be >= 1"),
        (["--data", str(cube_set), "--methods", "network", "--model", str(tmp_path / "nope.pt")], "model file not found"),
        (["--data", str(cube_set), "--methods", "none,network", "--refine-smoothness", "0.5"], "apply to the network+refine method"),
        (["--data", str(cube_set), "--methods", "network+refine", "--model", "none", "--refine-smoothness", "-1"], "--refine-smoothness must be"),
    ]
    for argv, expected in cases:
        with pytest.raises(VoxelMorphRegError) as caught:
            run_evaluate([*argv, "--out", str(tmp_path / "out")])
        assert expected in str(caught.value) and "\n" not in str(caught.value), argv


def test_command_line_wiring(cube_set, tmp_path, capsys):
    from VoxelMorphRegLib.frontends import cli

    subcommands = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    if "evaluate" not in subcommands:
        pytest.skip("cli.py does not add the evaluate sub-command yet")
    assert cli.main(["evaluate", "--data", str(cube_set), "--out", str(tmp_path / "out"), "--methods", "none", "--max-pairs", "1", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "| none" in captured.out and captured.err == ""
    assert cli.main(["evaluate", "--data", str(cube_set), "--out", str(tmp_path / "out"), "--methods", "bogus"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


# --------------------------------------------------------------------------- the ANTs adapter on synthetic files


def _linear_field(image, matrix):
    """A displacement image u(p) = B p (LPS mm) on ``image``'s grid: det(I + grad u) = det(I + B) everywhere."""
    from VoxelMorphRegLib.image.displacement import physical_points, vector_image

    return vector_image(physical_points(image) @ np.asarray(matrix).T, image)


def test_jacobian_of_is_right_on_oblique_grids_where_itks_filter_is_not():
    from VoxelMorphRegLib.pipelines.register import jacobian_of

    grid = sitk.Image(16, 16, 16, sitk.sitkFloat32)
    grid.SetSpacing((1.0, 1.5, 2.0))
    grid.SetDirection(rotation(0.4, 0.3, -0.5).flatten().tolist())
    matrix = np.array([[0.2, 0.1, 0.0], [0.0, 0.0, 0.3], [0.1, 0.0, -0.1]])
    field = _linear_field(grid, matrix)
    truth = np.linalg.det(np.eye(3) + matrix)
    assert abs(float(jacobian_of(field)[8, 8, 8]) - truth) < 1e-4
    assert abs(sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field))[8, 8, 8] - truth) > 0.05  # why the project keeps its own


def test_ants_statistics_of_a_synthetic_warp_and_affine(tmp_path):
    """ANTs' forward transform is the affine then the SyN field: det J = det(A) * det(I + grad w)."""
    fixed = blob_volume(size=(16, 16, 16), spacing=(1.2, 1.0, 1.4), direction=rotation(0.2, -0.1, 0.3))
    warp_path, affine_path = str(tmp_path / "pair_1Warp.nii.gz"), str(tmp_path / "pair_0GenericAffine.mat")
    sitk.WriteImage(_linear_field(fixed, 0.1 * np.eye(3)), warp_path)  # det(I + grad w) = 1.1**3
    affine = sitk.AffineTransform(3)
    affine.SetMatrix((0.9, 0, 0, 0, 1.0, 0, 0, 0, 1.0))  # det 0.9
    sitk.WriteTransform(affine, affine_path)
    stats = evaluation_methods.ants_warp_statistics(warp_path, affine_path, fixed)
    assert stats == {"folding_fraction": 0.0, "std_log_jacobian": pytest.approx(0.0, abs=1e-5)}
    sitk.WriteImage(_linear_field(fixed, -1.5 * np.eye(3)), warp_path)  # det(I + grad w) = -0.125: folded everywhere
    assert evaluation_methods.ants_warp_statistics(warp_path, None, fixed)["folding_fraction"] == 1.0
