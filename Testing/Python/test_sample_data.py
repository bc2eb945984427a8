"""The demo's sample brain (image/sample_data.py) and the demo pipeline's plumbing (pipelines/demo.py).

Tests that need the template skip when nilearn (the 'demo' extra) is not installed; the
error path for a missing nilearn is tested either way.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import sys
import types

import numpy as np
import pytest
import SimpleITK as sitk

from VoxelMorphRegLib.errors import VoxelMorphRegError
from VoxelMorphRegLib.image import sample_data

needs_nilearn = pytest.mark.skipif(importlib.util.find_spec("nilearn") is None, reason="nilearn (the demo's sample brain) is not installed")


@pytest.fixture(scope="module")
def template_3mm():
    return sample_data.load_template(spacing=3.0)


def _mask_points(mask: sitk.Image) -> np.ndarray:
    """LPS positions of the mask's voxels."""
    kji = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0).astype(float)
    matrix = np.array(mask.GetDirection()).reshape(3, 3) @ np.diag(mask.GetSpacing())
    return kji[:, ::-1] @ matrix.T + np.array(mask.GetOrigin())


@needs_nilearn
def test_template_is_read_from_the_installed_nilearn_package():
    path = sample_data.template_path()
    assert path.name == "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    assert path.parent.parts[-3:] == ("nilearn", "datasets", "data")
    assert path.is_file()


@needs_nilearn
def test_template_is_a_skull_stripped_volume_in_unit_range(template_3mm):
    image, mask = template_3mm
    assert image.GetDimension() == 3 and image.GetNumberOfComponentsPerPixel() == 1
    assert image.GetPixelID() == sitk.sitkFloat32
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert image.GetSize() == mask.GetSize()
    assert np.allclose(image.GetOrigin(), mask.GetOrigin()) and np.allclose(image.GetDirection(), mask.GetDirection())
    assert np.allclose(image.GetSpacing(), (3.0, 3.0, 3.0))
    values = sitk.GetArrayFromImage(image)
    inside = sitk.GetArrayFromImage(mask)
    assert set(np.unique(inside)) == {0, 1}
    assert values.min() >= 0.0 and values.max() <= 1.0
    assert values.max() > 0.95
    assert np.all(values[inside == 0] == 0.0)
    assert np.median(values[inside == 1]) > 0.3
    brain_ml = inside.sum() * np.prod(mask.GetSpacing()) / 1000.0
    assert 1200 < brain_ml < 2200  # an adult brain with cerebellum and brain stem


@needs_nilearn
def test_template_geometry_is_lps_mni(template_3mm):
    """Physical points are LPS: MNI (RAS) coordinates with x and y negated.

    In MNI space the brain spans y = -104 (occipital) .. +70 (frontal) mm RAS, so in LPS the
    frontal pole is near y = -70 and the occipital pole near y = +104; its centroid lies
    behind and above the anterior commissure (the origin).
    """
    image, mask = template_3mm
    assert np.allclose(np.array(image.GetDirection()).reshape(3, 3), np.diag([-1.0, -1.0, 1.0]))
    points = _mask_points(mask)
    centroid = points.mean(axis=0)
    assert abs(centroid[0]) < 3.0
    assert 10.0 < centroid[1] < 35.0
    assert 0.0 < centroid[2] < 20.0
    assert points[:, 1].min() < -60.0 and points[:, 1].max() > 95.0
    assert points[:, 0].min() < -60.0 and points[:, 0].max() > 60.0


@needs_nilearn
def test_full_resolution_template_is_cropped_around_the_brain():
    image, mask = sample_data.load_template(margin_mm=8.0)
    assert np.allclose(image.GetSpacing(), (1.0, 1.0, 1.0))
    assert np.all(np.array(image.GetSize()) <= np.array([197, 233, 189]))
    inside = sitk.GetArrayViewFromImage(mask) > 0
    # 8 mm of background on every side the file allows (the file's own field of view ends at
    # the brain stem, so the inferior side may be shorter).
    for axis, name in ((0, "k"), (1, "j"), (2, "i")):
        present = np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != axis)))
        low_gap, high_gap = present[0], inside.shape[axis] - 1 - present[-1]
        if name == "k":
            assert low_gap <= 8 and high_gap == 8
        else:
            assert low_gap == 8 and high_gap == 8


def test_missing_nilearn_gives_a_one_line_install_hint(monkeypatch):
    monkeypatch.setattr(sample_data.importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(VoxelMorphRegError) as caught:
        sample_data.load_template()
    message = str(caught.value)
    assert "pip install nilearn" in message and "\n" not in message


def test_template_missing_from_nilearn_gives_a_one_line_hint(monkeypatch, tmp_path):
    spec = importlib.machinery.ModuleSpec("nilearn", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(sample_data.importlib.util, "find_spec", lambda name, *args: spec)
    with pytest.raises(VoxelMorphRegError) as caught:
        sample_data.template_path()
    message = str(caught.value)
    assert sample_data.TEMPLATE_FILE in message and "pip install nilearn" in message and "\n" not in message


def test_licence_notice_ships_with_the_project():
    text = sample_data.NOTICE_FILE.read_text(encoding="utf-8")
    assert "Louis Collins" in text and "McGill University" in text
    assert "Permission to use, copy, modify, and distribute" in text
    assert "above copyright notice appear in all copies" in text
    assert sample_data.TEMPLATE_FILE in text
    assert sample_data.notice_text() == text
    # The built-in fallback (for installs without Resources/) is the same notice, word for word.
    assert " ".join(sample_data.TEMPLATE_NOTICE.split()) in " ".join(text.split())


def test_notice_is_available_without_the_resource_file(monkeypatch, tmp_path):
    monkeypatch.setattr(sample_data, "NOTICE_FILE", tmp_path / "absent.txt")
    monkeypatch.setattr(sample_data.sys, "prefix", str(tmp_path))
    text = sample_data.notice_text()
    assert sample_data.TEMPLATE_NOTICE in text and sample_data.TEMPLATE_FILE in text


@needs_nilearn
def test_demo_writes_inputs_and_scores_the_estimate(monkeypatch, tmp_path):
    """run_demo's plumbing with a stand-in register: it returns the truth plus 1 mm along x."""
    calls = {}

    class Options:
        def __init__(self, **kwargs):
            self.__dict__.update(kwargs)

    def register_files(fixed_path, moving_path, out_dir, options, moving_labels=None, fixed_labels=None, log=print):
        calls["options"] = options
        calls["paths"] = (fixed_path, moving_path)
        truth = sitk.ReadImage(str(out_dir / "inputs" / "true_displacement.nii.gz"))
        field = sitk.GetArrayFromImage(truth) + np.array([1.0, 0.0, 0.0])
        estimate = sitk.GetImageFromArray(field, isVector=True)
        estimate.CopyInformation(truth)
        sitk.WriteImage(estimate, str(out_dir / "displacement.nii.gz"))
        metrics = {"seconds": {"total": 1.0}}
        (out_dir / "metrics.json").write_text(json.dumps(metrics))
        return types.SimpleNamespace(metrics=metrics)

    fake = types.ModuleType("VoxelMorphRegLib.pipelines.register")
    fake.RegisterOptions = Options
    fake.register_files = register_files
    monkeypatch.setitem(sys.modules, "VoxelMorphRegLib.pipelines.register", fake)
    from VoxelMorphRegLib.pipelines.demo import run_demo

    lines = []
    metrics = run_demo(tmp_path / "demo", model="none", device="cpu", seed=3, log=lines.append, sample_spacing=4.0)

    inputs = tmp_path / "demo" / "inputs"
    for name in ("fixed.nii.gz", "moving.nii.gz", "true_displacement.nii.gz", "brain_mask.nii.gz", "NOTICE-MNI152.txt"):
        assert (inputs / name).is_file(), name
    options = calls["options"]
    # 'none' (optimisation only) keeps register's default refinement; a model gets none.
    assert (options.model, options.device, options.affine, options.refine_iterations, options.qc) == ("none", "cpu", True, None, True)
    assert [p.name for p in calls["paths"]] == ["fixed.nii.gz", "moving.nii.gz"]

    written = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert written == metrics
    assert written["seconds"] == {"total": 1.0}
    demo = written["demo"]
    assert demo["seed"] == 3
    assert demo["true_displacement_mm"]["max"] == pytest.approx(6.0, rel=0.03)
    assert demo["error_before_mm"] == demo["true_displacement_mm"]
    for key in ("mean", "median", "p95", "max"):
        assert demo["error_mm"][key] == pytest.approx(1.0, abs=1e-3)
    assert any("error" in line for line in lines)


def test_demo_refine_option_reaches_the_registration(monkeypatch, tmp_path):
    """``voxelmorphreg demo --refine 0`` shows the network alone: the count reaches run_demo (and,
    through it, register's options, checked above); without the option the model's default runs."""
    from VoxelMorphRegLib.frontends import cli
    from VoxelMorphRegLib.pipelines import demo

    seen = []
    monkeypatch.setattr(demo, "run_demo", lambda out, **kwargs: seen.append(kwargs["refine"]) or {})
    assert cli.main(["demo", "--out", str(tmp_path / "a"), "--refine", "0", "--quiet"]) == 0
    assert cli.main(["demo", "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert seen == [0, None]
