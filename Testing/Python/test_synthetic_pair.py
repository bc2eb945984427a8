"""The synthetic moving image and its known fixed-to-moving field (image/synthetic_pair.py).

Most tests use a small smooth phantom on an oblique, anisotropic grid, where mixing up the
(k, j, i) channel order, the direction matrix, the spacing or the sign of the field changes
the numbers; one test uses the real sample brain when nilearn is installed.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from VoxelMorphRegLib.image.synthetic_pair import displacement_error, displacement_magnitude, flow_to_displacement, make_synthetic_pair

PURE_WARP = dict(log_gamma_std=0.0, bias_strength=0.0, noise_std=0.0)
SPACING = (1.2, 0.9, 1.5)  # (i, j, k) mm
SIZE = (40, 52, 34)  # (i, j, k)


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    ax, ay, az = np.radians([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


DIRECTIONS = {
    "oblique": _rotation(20, -15, 30),
    "oblique-flipped": _rotation(-10, 25, 40) @ np.diag([-1.0, 1.0, 1.0]),  # det -1, as some NIfTI files
}


def _grid(direction: np.ndarray) -> sitk.Image:
    image = sitk.Image(SIZE, sitk.sitkFloat32)
    image.SetSpacing(SPACING)
    image.SetDirection(direction.flatten().tolist())
    image.SetOrigin((-12.0, 30.5, 7.25))
    return image


def _from_array(array: np.ndarray, reference: sitk.Image, pixel=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return sitk.Cast(image, pixel) if pixel is not None else image


def _phantom(direction: np.ndarray) -> tuple[sitk.Image, sitk.Image]:
    """Smooth random texture (structure ~4 mm) inside an ellipsoid, values in [0, 1], and its mask."""
    grid = _grid(direction)
    rng = np.random.default_rng(7)
    noise = _from_array(rng.standard_normal(SIZE[::-1]).astype(np.float32), grid)
    texture = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(noise, 4.0))
    texture = np.clip(0.5 + 0.2 * (texture - texture.mean()) / texture.std(), 0.0, 1.0)
    k, j, i = np.meshgrid(*(np.linspace(-1, 1, n) for n in SIZE[::-1]), indexing="ij")
    inside = (i / 0.8) ** 2 + (j / 0.8) ** 2 + (k / 0.75) ** 2 <= 1.0
    # A soft edge: a hard step would dominate the resampling errors the tests look at.
    window = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(_from_array(inside.astype(np.float32), grid), 2.0))
    image = (texture * window).astype(np.float32)
    return _from_array(image, grid), _from_array(inside.astype(np.uint8), grid)


def _resample(moving: sitk.Image, reference: sitk.Image, field: sitk.Image) -> sitk.Image:
    transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))  # takes a copy's buffer
    return sitk.Resample(moving, reference, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def _vector(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float64), isVector=True)
    image.CopyInformation(reference)
    return image


def _scores(image: sitk.Image, fixed: sitk.Image, mask: np.ndarray) -> tuple[float, float]:
    """(correlation, RMS difference) with ``fixed`` inside ``mask``."""
    a = sitk.GetArrayFromImage(image)[mask]
    b = sitk.GetArrayFromImage(fixed)[mask]
    return float(np.corrcoef(a, b)[0, 1]), float(np.sqrt(np.mean((a - b) ** 2)))


def _flow_from_field(field: sitk.Image) -> np.ndarray:
    """Back to a voxel flow [3(k,j,i), K, J, I] with the correct convention (used to build wrong ones)."""
    matrix = np.array(field.GetDirection()).reshape(3, 3) @ np.diag(field.GetSpacing())
    flow_ijk = sitk.GetArrayFromImage(field) @ np.linalg.inv(matrix).T
    return np.moveaxis(flow_ijk, -1, 0)[::-1]


@pytest.fixture(scope="module", params=sorted(DIRECTIONS))
def phantom_pair(request):
    fixed, mask = _phantom(DIRECTIONS[request.param])
    pair = make_synthetic_pair(fixed, mask, seed=3, max_displacement_mm=6.0, control_spacing_mm=20.0, **PURE_WARP)
    return fixed, mask, pair


def test_outputs_live_on_the_fixed_grid(phantom_pair):
    fixed, _, pair = phantom_pair
    for image in (pair.moving, pair.truth):
        assert image.GetSize() == fixed.GetSize()
        assert np.allclose(image.GetSpacing(), fixed.GetSpacing())
        assert np.allclose(image.GetOrigin(), fixed.GetOrigin())
        assert np.allclose(image.GetDirection(), fixed.GetDirection())
    assert pair.moving.GetPixelID() == sitk.sitkFloat32
    assert pair.truth.GetPixelID() == sitk.sitkVectorFloat64
    assert pair.truth.GetNumberOfComponentsPerPixel() == 3


def test_truth_has_the_requested_magnitude(phantom_pair):
    _, mask, pair = phantom_pair
    stats = displacement_magnitude(pair.truth, mask)
    assert stats["max"] == pytest.approx(6.0, rel=0.03)
    assert 0.5 < stats["mean"] < stats["p95"] <= stats["max"]
    assert pair.info["true_displacement_mm"]["max"] == pytest.approx(stats["max"])


def test_requested_magnitude_is_physical_on_an_anisotropic_grid():
    fixed, mask = _phantom(DIRECTIONS["oblique"])
    for target in (2.0, 9.0):
        pair = make_synthetic_pair(fixed, mask, seed=5, max_displacement_mm=target, **PURE_WARP)
        assert displacement_magnitude(pair.truth, mask)["max"] == pytest.approx(target, rel=0.03)
    # Each physical axis of the grid gets displacements of similar size (mm, not voxels).
    field = sitk.GetArrayFromImage(pair.truth)[sitk.GetArrayFromImage(mask) > 0]
    matrix = np.array(fixed.GetDirection()).reshape(3, 3)
    along_axes_mm = np.abs(field @ matrix).max(axis=0)  # components along the i, j, k axes
    assert along_axes_mm.max() / along_axes_mm.min() < 2.0


def test_resampling_moving_through_the_truth_gives_back_fixed(phantom_pair):
    fixed, mask, pair = phantom_pair
    inside = sitk.GetArrayFromImage(mask) > 0
    corr_before, rms_before = _scores(pair.moving, fixed, inside)
    corr_after, rms_after = _scores(_resample(pair.moving, fixed, pair.truth), fixed, inside)
    assert corr_after > 0.98
    assert corr_before < corr_after - 0.05
    assert rms_after < 0.35 * rms_before


def test_an_inverted_field_makes_recovery_worse(phantom_pair):
    fixed, mask, pair = phantom_pair
    inside = sitk.GetArrayFromImage(mask) > 0
    flipped = _vector(-sitk.GetArrayFromImage(pair.truth), fixed)
    corr_before, rms_before = _scores(pair.moving, fixed, inside)
    corr_true, _ = _scores(_resample(pair.moving, fixed, pair.truth), fixed, inside)
    corr_flipped, rms_flipped = _scores(_resample(pair.moving, fixed, flipped), fixed, inside)
    assert corr_flipped < corr_before < corr_true
    assert rms_flipped > rms_before


@pytest.mark.parametrize("mistake", ["channels not reversed", "direction ignored", "spacing ignored"])
def test_conversion_mistakes_are_caught(phantom_pair, mistake):
    """A field converted from voxels with a classic mistake recovers fixed much worse than the truth."""
    fixed, mask, pair = phantom_pair
    inside = sitk.GetArrayFromImage(mask) > 0
    flow_kji = _flow_from_field(pair.truth)
    direction = np.array(fixed.GetDirection()).reshape(3, 3)
    spacing = np.diag(fixed.GetSpacing())
    flow_ijk = np.moveaxis(flow_kji[::-1], 0, -1)
    if mistake == "channels not reversed":
        wrong = np.moveaxis(flow_kji, 0, -1) @ (direction @ spacing).T
    elif mistake == "direction ignored":
        wrong = flow_ijk @ spacing.T
    else:
        wrong = flow_ijk @ direction.T
    corr_true, rms_true = _scores(_resample(pair.moving, fixed, pair.truth), fixed, inside)
    corr_wrong, rms_wrong = _scores(_resample(pair.moving, fixed, _vector(wrong, fixed)), fixed, inside)
    assert corr_wrong < corr_true - 0.01
    assert rms_wrong > 1.5 * rms_true


def test_a_landmark_moves_to_p_plus_truth_of_p():
    """Anatomy at fixed point p is found at p + truth(p) in the moving image."""
    grid = _grid(DIRECTIONS["oblique"])
    settings = dict(seed=11, max_displacement_mm=7.0, control_spacing_mm=20.0, **PURE_WARP)
    field = make_synthetic_pair(grid + 0.5, None, **settings).truth  # depends on seed and grid only
    norm = np.linalg.norm(sitk.GetArrayFromImage(field), axis=-1)
    margin = 9
    interior = np.zeros_like(norm, dtype=bool)
    interior[margin:-margin, margin:-margin, margin:-margin] = True
    k, j, i = np.unravel_index(np.argmax(np.where(interior, norm, 0)), norm.shape)
    p = np.array(grid.TransformIndexToPhysicalPoint((int(i), int(j), int(k))))
    true_shift = np.array(field.EvaluateAtPhysicalPoint(p.tolist()))
    assert np.linalg.norm(true_shift) > 2.5

    points = np.stack(np.meshgrid(*(np.arange(n) for n in SIZE[::-1]), indexing="ij"), -1)[..., ::-1]
    matrix = np.array(grid.GetDirection()).reshape(3, 3) @ np.diag(grid.GetSpacing())
    physical = points @ matrix.T + np.array(grid.GetOrigin())
    blob = np.exp(-np.sum((physical - p) ** 2, axis=-1) / (2 * 2.0**2)).astype(np.float32)
    pair = make_synthetic_pair(_from_array(blob, grid), None, **settings)
    assert np.allclose(sitk.GetArrayFromImage(pair.truth), sitk.GetArrayFromImage(field))

    weights = sitk.GetArrayFromImage(pair.moving).astype(np.float64)
    centroid = (physical * weights[..., None]).sum(axis=(0, 1, 2)) / weights.sum()
    assert np.linalg.norm(centroid - (p + true_shift)) < 1.0
    assert np.linalg.norm(centroid - (p - true_shift)) > 4.0


def test_same_seed_same_pair_other_seed_other_pair():
    fixed, mask = _phantom(DIRECTIONS["oblique"])
    a = make_synthetic_pair(fixed, mask, seed=1)
    b = make_synthetic_pair(fixed, mask, seed=1)
    c = make_synthetic_pair(fixed, mask, seed=2)
    assert np.array_equal(sitk.GetArrayFromImage(a.moving), sitk.GetArrayFromImage(b.moving))
    assert np.array_equal(sitk.GetArrayFromImage(a.truth), sitk.GetArrayFromImage(b.truth))
    assert not np.allclose(sitk.GetArrayFromImage(a.truth), sitk.GetArrayFromImage(c.truth))


def test_intensity_changes_keep_range_and_background():
    fixed, mask = _phantom(DIRECTIONS["oblique"])
    plain = make_synthetic_pair(fixed, mask, seed=4, **PURE_WARP)
    changed = make_synthetic_pair(fixed, mask, seed=4, log_gamma_std=0.25, bias_strength=0.2, noise_std=0.02)
    assert np.allclose(sitk.GetArrayFromImage(plain.truth), sitk.GetArrayFromImage(changed.truth))
    pure = sitk.GetArrayFromImage(plain.moving)
    moving = sitk.GetArrayFromImage(changed.moving)
    assert moving.min() >= 0.0 and moving.max() <= 1.0
    assert np.all(moving[pure == 0] == 0)
    assert np.abs(moving - pure)[pure > 0].mean() > 0.01


def test_flow_to_displacement_on_a_known_case():
    grid = _grid(DIRECTIONS["oblique"])
    flow = torch.zeros((1, 3, *SIZE[::-1]))
    flow[:, 0] = 1.0  # one voxel along k
    flow[:, 2] = -2.0  # minus two voxels along i
    field = sitk.GetArrayFromImage(flow_to_displacement(flow, grid))
    direction = np.array(grid.GetDirection()).reshape(3, 3)
    expected = direction[:, 2] * SPACING[2] - 2.0 * direction[:, 0] * SPACING[0]
    assert np.allclose(field, expected)


def test_flow_to_displacement_agrees_with_the_register_pipeline():
    try:
        from VoxelMorphRegLib.image.displacement import flow_to_physical
    except ImportError:
        pytest.skip("image/displacement.py (register pipeline) not present")
    grid = _grid(DIRECTIONS["oblique-flipped"])
    flow = torch.randn((1, 3, *SIZE[::-1]), generator=torch.Generator().manual_seed(0))
    ours = sitk.GetArrayFromImage(flow_to_displacement(flow, grid))
    assert np.allclose(ours, flow_to_physical(flow[0].numpy(), grid), atol=1e-5)


def test_displacement_error_zero_and_constant_offset():
    fixed, mask = _phantom(DIRECTIONS["oblique"])
    truth = make_synthetic_pair(fixed, mask, seed=2, **PURE_WARP).truth
    zero = displacement_error(truth, truth, mask)
    assert zero == {"mean": 0.0, "median": 0.0, "p95": 0.0, "max": 0.0}
    offset = np.array([1.0, -2.0, 2.0])  # |offset| = 3 mm
    shifted = _vector(sitk.GetArrayFromImage(truth) + offset, truth)
    error = displacement_error(shifted, truth, mask)
    for key in ("mean", "median", "p95", "max"):
        assert error[key] == pytest.approx(3.0)
    # Only voxels inside the mask count.
    array = sitk.GetArrayFromImage(shifted)
    array[sitk.GetArrayFromImage(mask) == 0] += 100.0
    assert displacement_error(_vector(array, truth), truth, mask)["max"] == pytest.approx(3.0)
    assert displacement_error(_vector(array, truth), truth)["max"] > 90.0
    # Doing nothing costs |truth|.
    assert displacement_error(_vector(np.zeros_like(array), truth), truth, mask) == pytest.approx(displacement_magnitude(truth, mask))


def test_displacement_error_resamples_an_estimate_on_another_grid():
    """An estimate on another grid (axis-aligned, coarser, larger) is compared at truth's voxels."""
    fixed, mask = _phantom(DIRECTIONS["oblique"])
    shift = [0.5, 1.5, -1.0]
    truth = _vector(np.broadcast_to(shift, (*SIZE[::-1], 3)), fixed)
    corners = np.array([fixed.TransformContinuousIndexToPhysicalPoint([c * (n - 1) for c, n in zip(pick, SIZE)]) for pick in np.ndindex(2, 2, 2)])
    low, high = corners.min(axis=0) - 5.0, corners.max(axis=0) + 5.0
    size = [int(n) for n in np.ceil((high - low) / 2.0) + 1]
    other = sitk.Image(size, sitk.sitkFloat32)
    other.SetSpacing((2.0, 2.0, 2.0))
    other.SetOrigin(low.tolist())
    estimate = _vector(np.broadcast_to(shift, (*size[::-1], 3)), other)
    assert displacement_error(estimate, truth, mask)["max"] < 1e-6
    wrong = _vector(np.broadcast_to([0.5, 1.5, 1.0], (*size[::-1], 3)), other)
    assert displacement_error(wrong, truth, mask)["mean"] == pytest.approx(2.0)


@pytest.mark.skipif(importlib.util.find_spec("nilearn") is None, reason="nilearn (the demo's sample brain) is not installed")
def test_truth_recovers_the_sample_brain():
    from VoxelMorphRegLib.image.sample_data import load_template

    fixed, mask = load_template(spacing=3.0)
    # A little smoothing so that resampling twice (synthesis, then check) does not dominate.
    fixed = sitk.Mask(sitk.SmoothingRecursiveGaussian(fixed, 3.0), mask)
    inside = sitk.GetArrayFromImage(mask) > 0
    pair = make_synthetic_pair(fixed, mask, seed=0, max_displacement_mm=8.0, **PURE_WARP)
    corr_before, rms_before = _scores(pair.moving, fixed, inside)
    corr_after, rms_after = _scores(_resample(pair.moving, fixed, pair.truth), fixed, inside)
    flipped = _vector(-sitk.GetArrayFromImage(pair.truth), fixed)
    corr_flipped, _ = _scores(_resample(pair.moving, fixed, flipped), fixed, inside)
    assert corr_after > 0.98
    assert rms_after < 0.5 * rms_before
    assert corr_flipped < corr_before < corr_after


def test_integrating_on_the_coarse_grid_gives_the_field_of_the_image_grid():
    """The deformation is integrated at about 2 mm and brought to the image's ~1 mm grid: the truth
    it gives differs from integrating on the image grid itself by a small fraction of its size,
    and the moving image is pulled through that same field (it stays consistent with the truth)."""
    fixed, mask = _phantom(DIRECTIONS["oblique"])
    coarse = make_synthetic_pair(fixed, mask, seed=4, max_displacement_mm=6.0, **PURE_WARP)
    fine = make_synthetic_pair(fixed, mask, seed=4, max_displacement_mm=6.0, integration_spacing_mm=None, **PURE_WARP)
    difference = displacement_error(coarse.truth, fine.truth, mask)
    assert difference["max"] < 0.1 * 6.0 and difference["mean"] < 0.02 * 6.0, difference
    assert displacement_magnitude(coarse.truth, mask)["max"] == pytest.approx(6.0, rel=0.03)
    inside = sitk.GetArrayFromImage(mask) > 0
    corr_coarse, _ = _scores(_resample(coarse.moving, fixed, coarse.truth), fixed, inside)
    corr_fine, _ = _scores(_resample(fine.moving, fixed, fine.truth), fixed, inside)
    assert corr_coarse > corr_fine - 0.01
