"""What register writes: only what was asked for (--no-inverse, --no-jacobian, --no-qc), in the
format asked for (--uncompressed), qc.png added to the committed set, and the Slicer hand-off."""

import json

import pytest
import SimpleITK as sitk
from conftest import blob_volume

from VoxelMorphRegLib.frontends.cli import build_parser, main
from VoxelMorphRegLib.image.io import same_grid
from VoxelMorphRegLib.image.output_set import check_manifest

FAST = ["--model", "none", "--refine", "2", "--no-affine", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("writing")
    paths = {}
    for name, seed in (("fixed", 0), ("moving", 1)):
        paths[name] = folder / f"{name}.nii.gz"
        sitk.WriteImage(blob_volume(size=(24, 22, 20), seed=seed), str(paths[name]))
    return paths


def files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_only_what_was_asked_for_uncompressed_then_a_compressed_rerun_replaces_it(pair, tmp_path):
    out = tmp_path / "out"
    assert main(["register", str(pair["fixed"]), str(pair["moving"]), "--out", str(out), *FAST, "--no-qc", "--no-inverse", "--no-jacobian", "--uncompressed"]) == 0
    assert files(out) == ["displacement.nii", "metrics.json", "warped.nii"]
    assert check_manifest(out, "metrics.json") == []
    warped = sitk.ReadImage(str(out / "warped.nii"))
    assert same_grid(warped, sitk.ReadImage(str(pair["fixed"])))
    assert (out / "warped.nii").stat().st_size >= 4 * 24 * 22 * 20  # float32 voxels, not compressed
    field = sitk.ReadImage(str(out / "displacement.nii"))
    assert field.GetNumberOfComponentsPerPixel() == 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert "folding_fraction" in metrics  # the Jacobian was still computed

    # The same folder, default format and outputs: the .nii set is replaced, nothing mixed.
    assert main(["register", str(pair["fixed"]), str(pair["moving"]), "--out", str(out), *FAST]) == 0
    assert files(out) == ["displacement.nii.gz", "inverse_displacement.nii.gz", "jacobian.nii.gz", "metrics.json", "qc.png", "warped.nii.gz"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics["files"]) == ["displacement.nii.gz", "inverse_displacement.nii.gz", "jacobian.nii.gz", "qc.png", "warped.nii.gz"]
    assert check_manifest(out, "metrics.json") == []  # qc.png, added after the commit, is listed with its checksum
    assert (out / "qc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert metrics["seconds"]["qc"] > 0 and metrics["seconds"]["qc_wait"] >= 0


def test_the_slicer_handoff_asks_for_uncompressed_files_and_only_what_the_module_imports():
    from conftest import require_slicer_core

    require_slicer_core()
    from VoxelMorphRegLib.contract import RegisterJob, RegisterOptions
    from VoxelMorphRegLib.mrml import runner

    for inverse, jacobian in ((False, True), (True, False)):
        options = runner.handoff_options(RegisterOptions(refine_iterations=3), inverse, jacobian)
        args = build_parser().parse_args(runner.build_command(["x"], RegisterJob("f.nrrd", "m.nrrd", "o", options=options))[1:])
        assert (args.uncompressed, args.no_qc, args.no_inverse, args.no_jacobian, args.refine) == (True, True, not inverse, not jacobian, 3)
