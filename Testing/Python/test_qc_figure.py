"""qc.png samples only the three displayed planes: each plane must equal the same plane cut from
the whole volume (reoriented to LPS, resampled through the affine), on an oblique, anisotropic
fixed grid, and the planes must follow the display convention (anterior / superior up, patient
left on the right)."""

from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from VoxelMorphRegLib.image.displacement import physical_points
from VoxelMorphRegLib.image.model_grid import resample_to
from VoxelMorphRegLib.pipelines import qc_figure


def _volume(size, spacing, direction, origin, seed):
    rng = np.random.default_rng(seed)
    array = rng.random(size[::-1]).astype(np.float32)
    image = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(array), 1.5)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    image.SetOrigin(origin)
    return sitk.Cast(image, sitk.sitkFloat32)


@pytest.fixture(scope="module")
def case():
    # RAS-like axes, permuted (i runs superior-inferior), anisotropic: DICOMOrient must flip and permute
    direction = (0, 0, 1, -1, 0, 0, 0, -1, 0)
    fixed = _volume((18, 22, 26), (1.5, 0.9, 1.2), direction, (10.0, -4.0, 7.0), 0)
    moving = _volume((30, 30, 30), (1.5, 1.5, 1.5), (1, 0, 0, 0, 1, 0, 0, 0, 1), (0.0, -40.0, -20.0), 1)  # covers the fixed field of view
    affine = sitk.AffineTransform(3)
    affine.SetTranslation((1.5, -2.0, 0.7))
    affine.SetMatrix((1.02, 0.05, 0.0, -0.04, 0.98, 0.02, 0.0, 0.03, 1.01))
    rng = np.random.default_rng(2)
    field = sitk.GetImageFromArray(rng.normal(0, 1.0, (*fixed.GetSize()[::-1], 3)), isVector=True)
    field.CopyInformation(fixed)
    jacobian = _volume(fixed.GetSize(), fixed.GetSpacing(), fixed.GetDirection(), fixed.GetOrigin(), 3)
    warped = _volume(fixed.GetSize(), fixed.GetSpacing(), fixed.GetDirection(), fixed.GetOrigin(), 4)
    result = SimpleNamespace(affine=affine, warped=warped, jacobian=jacobian, displacement=field)
    return fixed, moving, result


def _reference_planes(volume):
    """The planes cut from a whole volume reoriented to LPS (what the figure showed before)."""
    array = sitk.GetArrayFromImage(sitk.DICOMOrient(volume, "LPS"))
    k, j, i = (n // 2 for n in array.shape[:3])
    return [array[k], array[:, j][::-1], array[:, :, i][::-1]]


def test_planes_equal_the_whole_volume_cut(case):
    fixed, moving, result = case
    slabs = qc_figure.plane_slabs(fixed)
    before = _reference_planes(resample_to(moving, fixed, result.affine))
    warped = _reference_planes(result.warped)
    jacobian = _reference_planes(result.jacobian)
    field = _reference_planes(result.displacement)
    points = _reference_planes(sitk.GetImageFromArray(physical_points(sitk.DICOMOrient(fixed, "LPS")), isVector=True))
    for index, slab in enumerate(slabs):
        np.testing.assert_allclose(qc_figure._plane(moving, slab, result.affine), before[index], atol=1e-4)
        np.testing.assert_allclose(qc_figure._plane(result.warped, slab), warped[index], atol=1e-5)
        np.testing.assert_array_equal(qc_figure._plane(result.jacobian, slab, interpolator=sitk.sitkNearestNeighbor), jacobian[index])
        np.testing.assert_allclose(qc_figure._plane(result.displacement, slab), field[index], atol=1e-9)
        np.testing.assert_allclose(qc_figure._oriented_plane(physical_points(slab), slab), points[index], atol=1e-9)


def test_planes_follow_the_display_convention(case):
    fixed, moving, result = case
    zero = sitk.GetImageFromArray(np.zeros((*fixed.GetSize()[::-1], 3)), isVector=True)
    zero.CopyInformation(fixed)
    planes = qc_figure.qc_planes(fixed, moving, SimpleNamespace(**{**vars(result), "displacement": zero}))
    axial, coronal, sagittal = (plane["mapped"] for plane in planes)  # LPS mm of each displayed pixel
    # axial: anterior at the top (LPS y grows to posterior, down the rows), patient left on the right (x grows to the left)
    assert np.all(np.diff(axial[..., 1], axis=0) > 0) and np.all(np.diff(axial[..., 0], axis=1) > 0)
    # coronal and sagittal: superior at the top (z falls down the rows); sagittal columns run to posterior
    assert np.all(np.diff(coronal[..., 2], axis=0) < 0) and np.all(np.diff(coronal[..., 0], axis=1) > 0)
    assert np.all(np.diff(sagittal[..., 2], axis=0) < 0) and np.all(np.diff(sagittal[..., 1], axis=1) > 0)
    # aspect = row spacing / column spacing in mm
    for plane, (rows, columns) in zip(planes, ((1, 0), (2, 0), (2, 1))):
        mapped = plane["mapped"]
        row_step = abs(mapped[1, 0, rows] - mapped[0, 0, rows])
        column_step = abs(mapped[0, 1, columns] - mapped[0, 0, columns])
        assert plane["aspect"] == pytest.approx(row_step / column_step)
    for plane in planes:
        for name in ("fixed", "before", "warped"):
            assert 0.0 <= plane[name].min() and plane[name].max() <= 1.0 and plane[name].max() > 0.5


def test_draw_qc_gives_a_png(case):
    fixed, moving, result = case
    result.metrics = {"model": "m.pt", "device": "cpu", "folding_fraction": 0.0, "std_log_jacobian": 0.1, "seconds": {"total": 1.0}}
    assert qc_figure.draw_qc(fixed, moving, result)[:8] == b"\x89PNG\r\n\x1a\n"


def test_brain_masks_are_outlined_on_the_planes_they_belong_to(case):
    fixed, moving, result = case
    fixed_mask = sitk.Cast(sitk.BinaryThreshold(result.warped, 0.45, 10.0), sitk.sitkUInt8)
    moving_mask = sitk.Cast(sitk.BinaryThreshold(moving, 0.5, 10.0), sitk.sitkUInt8)
    focused = SimpleNamespace(**{**vars(result), "brain_mask": fixed_mask, "moving_brain_mask": moving_mask,
                                 "metrics": {"brain_mask": {"used": True, "fixed": {"volume_ml": 1.0}, "moving": {"volume_ml": 1.0}}, "folding_region": "fixed brain mask"}})
    planes = qc_figure.qc_planes(fixed, moving, focused)
    fixed_cut = _reference_planes(fixed_mask)
    moving_cut = _reference_planes(resample_to(moving_mask, fixed, result.affine, labels=True))
    for index, plane in enumerate(planes):
        np.testing.assert_array_equal(plane["fixed_mask"], fixed_cut[index])
        np.testing.assert_array_equal(plane["moving_mask"], moving_cut[index])
        assert 0 < plane["fixed_mask"].mean() < 1
    assert qc_figure.draw_qc(fixed, moving, focused).startswith(b"\x89PNG")
    assert "brain masks (cyan)" in qc_figure._summary(focused.metrics)
    unused = SimpleNamespace(**{**vars(result), "brain_mask": fixed_mask, "moving_brain_mask": moving_mask, "metrics": {"brain_mask": {"used": False}}})
    assert "fixed_mask" not in qc_figure.qc_planes(fixed, moving, unused)[0]  # stripped pairs: nothing to outline
