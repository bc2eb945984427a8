"""The memory guard: a run that cannot fit is refused before it starts, in one line that says what to do."""

import pytest
import SimpleITK as sitk
from conftest import blob_volume, rotation

from VoxelMorphRegLib.checkpoint import ModelConfig
from VoxelMorphRegLib.errors import VoxelMorphRegError
from VoxelMorphRegLib.frontends.cli import main
from VoxelMorphRegLib.image.preprocessing import grid_for
from VoxelMorphRegLib.pipelines import memory_guard


def test_the_model_grid_size_is_computed_without_allocating_it():
    fixed = blob_volume(size=(36, 32, 28), spacing=(1.2, 0.9, 1.5), direction=rotation(0.3, -0.2, 0.5))
    for config in (ModelConfig(), ModelConfig(encoder_features=[4, 8, 8], decoder_features=[8], spacing=[1.5, 2.0, 3.0], orientation="RAS")):
        assert memory_guard.model_grid_size(fixed, config) == grid_for(fixed, config).GetSize()


def test_a_header_with_huge_spacing_is_refused_before_any_allocation(tmp_path, capsys):
    image = blob_volume(size=(32, 32, 32), spacing=(100.0, 100.0, 100.0))  # 3.2 m across: a model grid of 1600^3 voxels at 2 mm
    path = tmp_path / "huge_spacing.nii.gz"
    sitk.WriteImage(image, str(path))
    code = main(["register", str(path), str(path), "--out", str(tmp_path / "out"), "--model", "none", "--no-affine", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("voxelmorphreg: error: this registration needs about ") and "model grid 1600x1600x1600" in err[0], err
    assert "crop" in err[0] and "--device cpu" not in err[0]
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_a_run_above_the_available_memory_is_refused(tmp_path, capsys, monkeypatch):
    path = tmp_path / "image.nii.gz"
    sitk.WriteImage(blob_volume(size=(24, 24, 24)), str(path))
    monkeypatch.setattr(memory_guard, "available_bytes", lambda: int(0.3e9))
    code = main(["register", str(path), str(path), "--out", str(tmp_path / "out"), "--model", "none", "--no-affine", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "but 0.3 GB are available" in err[0], err
    monkeypatch.setenv(memory_guard.DISABLE, "1")
    assert memory_guard.check_memory(sitk.ReadImage(str(path)), sitk.ReadImage(str(path)), ModelConfig())["available_gb"] == 0.3


def test_the_estimate_grows_with_each_grid():
    base = memory_guard.estimate_peak_bytes((100, 100, 100), (100, 100, 100), (64, 64, 64))
    assert memory_guard.estimate_peak_bytes((200, 100, 100), (100, 100, 100), (64, 64, 64)) - base == 60 * 10**6
    assert memory_guard.estimate_peak_bytes((100, 100, 100), (200, 100, 100), (64, 64, 64)) - base == 40 * 10**6
    # peaks measured with /usr/bin/time -v (bench/whole_head_speed.py, bench/results/whole-head-speed-2026-12-08):
    # the estimate must stay within 25 % of each
    measured = [((160, 192, 224), (160, 192, 224), (80, 96, 112), 1.41e9),  # the aseg pair, default settings
                ((256, 256, 256), (256, 256, 256), (128, 128, 128), 2.58e9),  # 256^3 whole heads, --brain-mask auto
                ((256, 256, 256), (256, 256, 256), (128, 128, 128), 2.67e9)]  # the same, --brain-mask off
    for fixed, moving, grid, peak in measured:
        assert abs(memory_guard.estimate_peak_bytes(fixed, moving, grid) - peak) < 0.25 * peak
    available = memory_guard.available_bytes()
    assert available is None or available > 0


@pytest.mark.parametrize("failure", [RuntimeError("Exception thrown in SimpleITK Resample: Failed to allocate memory for image."),
                                     RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 82 GB"),
                                     MemoryError()])
def test_allocation_failures_are_one_line_errors(tmp_path, capsys, monkeypatch, failure):
    from VoxelMorphRegLib.frontends import cli

    def fails(args, log, events):
        raise failure

    monkeypatch.setattr(cli, "_run_demo", fails)
    assert cli.main(["demo", "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("voxelmorphreg: error: out of memory; crop"), err


def test_other_runtime_errors_are_not_hidden(tmp_path, monkeypatch):
    from VoxelMorphRegLib.frontends import cli

    def bug(args, log, events):
        raise RuntimeError("index 3 is out of bounds")

    monkeypatch.setattr(cli, "_run_demo", bug)
    with pytest.raises(RuntimeError, match="out of bounds"):
        cli.main(["demo", "--out", str(tmp_path), "--quiet"])
