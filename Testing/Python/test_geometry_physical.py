"""docs/GEOMETRY.md in the image layer: voxel flows to LPS mm, the fixed-to-moving direction, the affine composition.

Each test here fails if one convention is broken: [k, j, i] channel order, grid_sample's
(x, y, z) order, spacing or direction left out, displacement sign, composition order.
"""

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import blob_volume, rotation

from VoxelMorphRegLib.image.displacement import (
    compose_inverse_on_moving,
    compose_on_fixed,
    displacement_transform,
    flow_to_physical,
    index_to_physical_matrix,
    physical_points,
    physical_to_flow,
    vector_image,
    warp_through,
)
from VoxelMorphRegLib.image.model_grid import model_grid, orientation_of
from VoxelMorphRegLib.tensor.synthesis import random_velocity
from VoxelMorphRegLib.tensor.integration import integrate_velocity
from VoxelMorphRegLib.tensor.warping import warp


def smooth_flow(shape, magnitude=2.5, seed=1):
    velocity = random_velocity(shape, magnitude, control_spacing=8.0, generator=torch.Generator().manual_seed(seed))
    return integrate_velocity(velocity)[0].numpy()


def test_one_voxel_step_along_i_is_the_first_direction_column_times_spacing(oblique_image):
    flow = np.zeros((3, *oblique_image.GetSize()[::-1]))
    flow[2] = 1.0  # channel 2 is i
    field = flow_to_physical(flow, oblique_image)
    direction = np.array(oblique_image.GetDirection()).reshape(3, 3)
    assert np.allclose(field[0, 0, 0], direction[:, 0] * oblique_image.GetSpacing()[0])
    flow[:] = 0
    flow[0] = 1.0  # channel 0 is k
    assert np.allclose(flow_to_physical(flow, oblique_image)[3, 4, 5], direction[:, 2] * oblique_image.GetSpacing()[2])
    assert np.allclose(physical_to_flow(flow_to_physical(flow, oblique_image), oblique_image), flow)


def test_physical_points_match_simpleitk(oblique_image):
    points = physical_points(oblique_image)
    for index in [(0, 0, 0), (5, 7, 3), (35, 31, 27)]:
        i, j, k = index
        assert np.allclose(points[k, j, i], oblique_image.TransformIndexToPhysicalPoint(index))


def test_tensor_warp_equals_itk_resample_through_the_physical_field(oblique_image):
    """The network's warp and ITK's DisplacementFieldTransform agree on an oblique, anisotropic grid."""
    shape = oblique_image.GetSize()[::-1]
    flow = smooth_flow(shape)
    image = torch.from_numpy(sitk.GetArrayFromImage(oblique_image))[None, None]
    ours = warp(image, torch.from_numpy(flow)[None].float())[0, 0].numpy()
    field = vector_image(flow_to_physical(flow, oblique_image), oblique_image)
    theirs = sitk.GetArrayFromImage(sitk.Resample(oblique_image, oblique_image, displacement_transform(field), sitk.sitkLinear, 0.0))
    assert np.abs(flow).max() > 2.0
    assert np.allclose(ours, theirs, atol=1e-4)
    # and a sign error would be caught: the opposite field gives a clearly different image
    wrong = sitk.GetArrayFromImage(sitk.Resample(oblique_image, oblique_image, displacement_transform(vector_image(-flow_to_physical(flow, oblique_image), oblique_image)), sitk.sitkLinear, 0.0))
    assert np.abs(wrong - ours).max() > 0.1


@pytest.mark.parametrize("labels, pixel", [(False, sitk.sitkFloat32), (False, sitk.sitkInt16), (True, sitk.sitkInt32)])
def test_warp_through_the_field_is_itk_resample_through_its_transform_and_points_the_right_way(oblique_image, labels, pixel):
    """register warps with warp_through (ITK's WarpImageFilter): the image at p + u(p), u read at
    each fixed voxel, 0 where that leaves the moving image -- what Resample through the
    DisplacementFieldTransform gives, on a moving grid of another size, spacing and direction."""
    moving = blob_volume(size=(31, 29, 32), spacing=(1.4, 1.0, 1.3), direction=rotation(0.25, -0.1, 0.45), origin=(11.0, -19.0, 4.0), seed=3)
    if labels:
        moving = sitk.Cast(sitk.BinaryThreshold(moving, 0.3, 10.0, 7, 0) + sitk.BinaryThreshold(moving, 0.6, 10.0, 2, 0), pixel)
    elif pixel != sitk.sitkFloat32:  # an integer scan (e.g. int16 T1): warped into float32, not rounded
        moving = sitk.Cast(moving * 1000.0, pixel)
    field = vector_image(flow_to_physical(smooth_flow(oblique_image.GetSize()[::-1], magnitude=3.0, seed=5), oblique_image) + np.array([2.0, -1.5, 3.0]), oblique_image)
    ours = warp_through(moving, field, labels=labels)
    interpolator = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    output = pixel if labels else sitk.sitkFloat32
    theirs = sitk.Resample(moving, oblique_image, displacement_transform(field), interpolator, 0.0, output)
    assert ours.GetPixelID() == output and ours.GetSize() == oblique_image.GetSize()
    for get in ("GetOrigin", "GetSpacing", "GetDirection"):
        assert np.allclose(getattr(ours, get)(), getattr(oblique_image, get)())
    a, b = sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs)
    assert (a == 0).mean() > 0.05 and (a != 0).mean() > 0.1  # some voxels map outside the moving image
    if labels:
        np.testing.assert_array_equal(a, b)
    else:
        np.testing.assert_allclose(a, b, atol=1e-5)
    # the fixed voxel p takes the moving value at p + u(p), not p - u(p)
    u = sitk.GetArrayViewFromImage(field)
    points = physical_points(oblique_image)
    differs = 0
    inside = np.argwhere(a != 0)
    for k, j, i in inside[:: max(1, len(inside) // 6)][:6]:
        there = _value_at(moving, points[k, j, i] + u[k, j, i], interpolator, output)
        assert there != 0 and np.isclose(a[k, j, i], there, atol=1e-5, rtol=1e-6)
        differs += not np.isclose(a[k, j, i], _value_at(moving, points[k, j, i] - u[k, j, i], interpolator, output), atol=1e-3)
    assert differs >= 4


def _value_at(image, point, interpolator, pixel):
    """``image`` at one physical point (a one-voxel Resample, identity transform)."""
    probe = sitk.Image([1, 1, 1], pixel)
    probe.SetOrigin([float(c) for c in point])
    return sitk.GetArrayFromImage(sitk.Resample(image, probe, sitk.Transform(3, sitk.sitkIdentity), interpolator, 0.0, pixel))[0, 0, 0]


def affine_transform(seed=0):
    rng = np.random.default_rng(seed)
    transform = sitk.AffineTransform(3)
    transform.SetMatrix((rotation(0.1, -0.05, 0.08) @ np.diag([1.05, 0.95, 1.02])).flatten().tolist())
    transform.SetCenter(rng.normal(0, 10, 3).tolist())
    transform.SetTranslation([3.0, -2.0, 4.0])
    return transform


def test_composed_field_applies_deformation_then_affine(oblique_image):
    """T(p) = A(p + d(p)): ITK's CompositeTransform([A, D]) applies D first, then A."""
    grid = oblique_image
    d_field = vector_image(flow_to_physical(smooth_flow(grid.GetSize()[::-1]), grid), grid)
    affine = affine_transform()
    composed = compose_on_fixed(d_field, affine, oblique_image)
    reference = sitk.CompositeTransform([affine, displacement_transform(d_field)])
    points = physical_points(oblique_image)
    for index in [(4, 5, 6), (18, 16, 14), (30, 25, 20)]:
        i, j, k = index
        p = points[k, j, i]
        assert np.allclose(p + composed[k, j, i], reference.TransformPoint(p.tolist()), atol=1e-6)


def test_inverse_field_maps_moving_points_back(oblique_image):
    """T(T_inv(q)) = q: the inverse field (on the moving grid) undoes the composed forward field."""
    grid = oblique_image
    velocity = random_velocity(grid.GetSize()[::-1], 2.0, control_spacing=10.0, generator=torch.Generator().manual_seed(3))
    forward = integrate_velocity(velocity)[0].numpy()
    inverse = integrate_velocity(-velocity)[0].numpy()
    affine = affine_transform(1)
    affine.SetCenter(physical_points(grid)[14, 16, 18].tolist())
    affine.SetTranslation([1.0, -1.0, 0.5])
    forward_field = vector_image(compose_on_fixed(vector_image(flow_to_physical(forward, grid), grid), affine, grid), grid)
    moving = blob_volume(size=(36, 32, 28), spacing=(1.0, 1.1, 1.2), direction=rotation(0.32, -0.18, 0.52), origin=(10.5, -19.0, 5.5))
    inverse_array = compose_inverse_on_moving(vector_image(flow_to_physical(inverse, grid), grid), affine, moving)
    T = displacement_transform(forward_field)
    moving_points = physical_points(moving)
    errors = []
    rng = np.random.default_rng(0)
    for _ in range(200):
        k, j, i = (rng.integers(0, n) for n in moving_points.shape[:3])
        q = moving_points[k, j, i]
        p = q + inverse_array[k, j, i]  # the fixed point of q
        continuous = np.array(grid.TransformPhysicalPointToContinuousIndex(p.tolist()))
        if np.all(continuous > 4) and np.all(continuous < np.array(grid.GetSize()) - 5):
            errors.append(np.linalg.norm(np.array(T.TransformPoint(p.tolist())) - q))
    assert len(errors) > 30
    assert np.max(errors) < 0.2 and np.mean(errors) < 0.05  # mm, displacements up to ~3 mm


def test_model_grid_covers_the_fixed_image_in_the_model_orientation(oblique_image):
    grid = model_grid(oblique_image, (2.0, 2.0, 2.0), "LIA", 16)
    assert orientation_of(grid) == "LIA"
    assert all(n % 16 == 0 for n in grid.GetSize())
    from VoxelMorphRegLib.image.model_grid import physical_corners

    inside = [grid.TransformPhysicalPointToContinuousIndex(c.tolist()) for c in physical_corners(oblique_image)]
    assert np.all(np.array(inside) >= -0.5 - 1e-6) and np.all(np.array(inside) <= np.array(grid.GetSize()) - 0.5 + 1e-6)


def test_model_grid_of_the_atlas_space_is_the_atlas_grid_at_half_resolution():
    image = sitk.Image([160, 192, 224], sitk.sitkFloat32)
    image.SetDirection([1, 0, 0, 0, 0, -1, 0, -1, 0])
    image.SetOrigin((-80.0, 112.0, 96.0))
    grid = model_grid(image, (2.0, 2.0, 2.0), "LIA", 16)
    assert grid.GetSize() == (80, 96, 112)
    # the first model voxel centre sits half a model voxel inside the atlas corner
    assert np.allclose(grid.GetOrigin(), np.array(image.TransformContinuousIndexToPhysicalPoint((0.5, 0.5, 0.5))))


def test_nifti_displacement_holds_lps_vectors_for_other_readers(tmp_path, oblique_image):
    """A field written by SimpleITK reads back in nibabel as a vector intent with the same LPS values (ANTs' convention)."""
    nib = pytest.importorskip("nibabel")
    field = np.zeros((*oblique_image.GetSize()[::-1], 3))
    field[..., 0], field[..., 1], field[..., 2] = 1.5, -2.5, 0.25  # LPS mm
    path = tmp_path / "displacement.nii.gz"
    sitk.WriteImage(vector_image(field, oblique_image), str(path))
    img = nib.load(str(path))
    assert img.header.get_intent()[0] == "vector"
    data = np.asarray(img.dataobj)
    assert data.shape == (*oblique_image.GetSize(), 1, 3)
    assert np.allclose(data[3, 4, 5, 0], [1.5, -2.5, 0.25])
    back = sitk.ReadImage(str(path))
    assert back.GetNumberOfComponentsPerPixel() == 3
    assert np.allclose(sitk.GetArrayFromImage(back)[5, 4, 3], [1.5, -2.5, 0.25])
    assert np.allclose(index_to_physical_matrix(back), index_to_physical_matrix(oblique_image), atol=1e-5)



@pytest.mark.parametrize("with_affine", [True, False])
def test_composed_field_uses_the_deformable_field_out_to_half_a_voxel_beyond_its_grid_and_zero_beyond(oblique_image, with_affine):
    """A deformable field on a coarser grid of another orientation that covers only part of the
    fixed grid (as the model grid may at the image's edge): compose_on_fixed applies it wherever
    ITK's DisplacementFieldTransform does -- trilinear between voxel centres, the border value out
    to half a voxel beyond the last centre, nothing beyond -- and the affine everywhere."""
    coarse = sitk.Image([14, 12, 10], sitk.sitkFloat32)
    coarse.SetSpacing((2.0, 2.2, 2.5))
    coarse.SetDirection(rotation(-0.1, 0.25, 0.15).flatten().tolist())
    coarse.SetOrigin((12.0, -16.0, 9.0))
    d_field = vector_image(flow_to_physical(smooth_flow(coarse.GetSize()[::-1], magnitude=1.5, seed=4), coarse), coarse)
    affine = affine_transform(2) if with_affine else None
    ours = compose_on_fixed(d_field, affine, oblique_image).reshape(-1, 3)
    affine_only = compose_on_fixed(None, affine, oblique_image).reshape(-1, 3)
    points = physical_points(oblique_image).reshape(-1, 3)
    continuous = np.array([coarse.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in points])
    inside = np.all((continuous >= -0.5) & (continuous < np.array(coarse.GetSize()) - 0.5), axis=1)
    assert 0.2 < inside.mean() < 0.9
    band = inside & np.any((continuous < 0) | (continuous > np.array(coarse.GetSize()) - 1), axis=1)
    assert band.sum() > 20
    assert np.abs(ours[band] - affine_only[band]).max() > 0.05
    assert np.abs(ours[~inside] - affine_only[~inside]).max() < 1e-9
    # inside the grid: A(p + d(p)) - p with d trilinear at p
    A = np.eye(3) if affine is None else np.array(affine.GetMatrix()).reshape(3, 3)
    core = np.flatnonzero(np.all((continuous > 0) & (continuous < np.array(coarse.GetSize()) - 1), axis=1))[::97]
    for n in core:
        i, j, k = continuous[n]
        i0, j0, k0 = int(i), int(j), int(k)
        fi, fj, fk = i - i0, j - j0, k - k0
        d = np.zeros(3)
        for dk, wk in ((0, 1 - fk), (1, fk)):
            for dj, wj in ((0, 1 - fj), (1, fj)):
                for di, wi in ((0, 1 - fi), (1, fi)):
                    d += wk * wj * wi * sitk.GetArrayViewFromImage(d_field)[k0 + dk, j0 + dj, i0 + di]
        np.testing.assert_allclose(ours[n], affine_only[n] + A @ d, atol=1e-6)
    assert len(core) > 10


def test_composition_without_a_deformable_field_is_the_affine_alone(oblique_image):
    affine = affine_transform(3)
    ours = compose_on_fixed(None, affine, oblique_image)
    points = physical_points(oblique_image)
    expected = np.array([affine.TransformPoint(p.tolist()) for p in points.reshape(-1, 3)]).reshape(points.shape) - points
    assert np.abs(ours - expected).max() < 1e-6


@pytest.mark.parametrize("size", [(36, 32, 28), (9, 7, 40)])
def test_jacobian_of_a_physical_field_equals_that_of_its_index_flow_slab_by_slab(size):
    """register.jacobian_of (det(M + G) / det M, slabs along k) gives the determinant of the same
    field expressed in index axes (physical_to_flow, whole volume), on an oblique anisotropic grid,
    also where the volume has more slices than a slab and at the slab joins and borders."""
    from VoxelMorphRegLib.pipelines.register import jacobian_of
    from VoxelMorphRegLib.tensor.jacobian import SLAB_SLICES, jacobian_determinant

    grid = blob_volume(size=size, spacing=(1.2, 0.9, 1.5), direction=rotation(0.3, -0.2, 0.5), origin=(10.0, -20.0, 5.0))
    flow = smooth_flow(grid.GetSize()[::-1], magnitude=3.0, seed=5)
    field = vector_image(flow_to_physical(flow, grid), grid)
    ours = jacobian_of(field).numpy()
    reference = jacobian_determinant(torch.from_numpy(physical_to_flow(sitk.GetArrayFromImage(field), field))[None])[0].numpy()
    assert ours.shape == reference.shape == tuple(size[::-1])
    assert size[2] > SLAB_SLICES  # several slabs: their joins are compared too
    assert np.abs(ours - reference).max() < 1e-4
    assert np.abs(reference - 1).max() > 0.05  # a field that is not nearly the identity
    # the direction matters: the same numbers read as an axis-aligned grid give another determinant
    plain = sitk.GetImageFromArray(sitk.GetArrayFromImage(field), isVector=True)
    plain.SetSpacing(field.GetSpacing())
    assert np.abs(jacobian_of(plain).numpy() - ours).max() > 0.01
