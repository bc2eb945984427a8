"""Brain-focused registration: the taper, composition and Jacobian restricted to the brain's box, and
a whole-head run whose field is smooth everywhere and only the affine far from the brain."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import blob_volume, rotation
from brain_mask_stubs import SphereNetwork
from VoxelMorphRegLib.brain_mask_model import BrainMaskConfig
from VoxelMorphRegLib.contract import RegisterOptions
from VoxelMorphRegLib.image.displacement import (compose_inverse_on_moving, compose_on_fixed, index_to_physical_matrix, moving_region, vector_image)
from VoxelMorphRegLib.image.model_grid import model_grid
from VoxelMorphRegLib.pipelines import brain_focus
from VoxelMorphRegLib.pipelines import brain_mask as bm
from VoxelMorphRegLib.pipelines.register import jacobian_of, register_images


def _sphere_mask(reference: sitk.Image, centre, radius) -> sitk.Image:
    size = reference.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    points = np.stack([i, j, k], -1) @ index_to_physical_matrix(reference).T + np.array(reference.GetOrigin())
    mask = sitk.GetImageFromArray((np.linalg.norm(points - np.asarray(centre), axis=-1) < radius).astype(np.uint8))
    mask.CopyInformation(reference)
    return mask


def _fixed():
    image = blob_volume(size=(60, 56, 50), spacing=(1.5, 1.4, 1.6), direction=rotation(0.2, -0.1, 0.3), origin=(-40.0, -35.0, -30.0))
    return image


def test_taper_is_one_near_the_brain_and_zero_beyond_its_end():
    grid = model_grid(_fixed(), [2.0] * 3, "LIA", 16)
    centre = np.array(grid.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in grid.GetSize()]))
    mask = _sphere_mask(grid, centre, 15.0)
    weight = brain_focus.velocity_taper(mask, grid)[0, 0].numpy()
    size = grid.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    points = np.stack([i, j, k], -1) @ index_to_physical_matrix(grid).T + np.array(grid.GetOrigin())
    outside = np.linalg.norm(points - centre, axis=-1) - 15.0
    assert (weight[outside < brain_focus.TAPER_START_MM - 2.0] == 1).all()
    assert (weight[outside > brain_focus.TAPER_END_MM + 2.0] == 0).all()
    band = (outside > 8) & (outside < 16)
    assert ((weight[band] > 0) & (weight[band] < 1)).all()
    ramp = np.clip((outside - brain_focus.TAPER_START_MM) / (brain_focus.TAPER_END_MM - brain_focus.TAPER_START_MM), 0, 1)
    expected = 0.5 * (1 + np.cos(np.pi * ramp))  # the cosine of the true distance
    # the voxelised (2 mm) sphere's distance is within a voxel of the true one; the cosine's slope is at most pi / 24 per mm
    assert np.abs(weight - expected).max() < 2.0 * np.pi / 24 + 0.02


def _deformable_in_ball(grid, centre, radius, amplitude=3.0):
    size = grid.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    points = np.stack([i, j, k], -1) @ index_to_physical_matrix(grid).T + np.array(grid.GetOrigin())
    r = np.linalg.norm(points - centre, axis=-1)
    bump = np.clip(1 - r / radius, 0, None) ** 2
    field = np.stack([amplitude * bump, -0.5 * amplitude * bump, 0.7 * amplitude * bump], -1)
    return vector_image(field, grid)


def test_composition_restricted_to_the_brain_box_is_the_full_composition():
    fixed = _fixed()
    moving = blob_volume(size=(50, 60, 44), spacing=(1.3, 1.2, 1.7), direction=rotation(-0.3, 0.2, 0.1), origin=(-30.0, -45.0, -25.0))
    affine = sitk.AffineTransform(3)
    affine.SetMatrix((np.eye(3) + 0.05 * np.array([[1, 0.2, 0], [0.1, -0.5, 0.3], [0, 0.2, 0.4]])).flatten().tolist())
    affine.SetTranslation((3.0, -2.0, 4.0))
    centre = np.array(fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()]))
    mask = _sphere_mask(fixed, centre, 12.0)
    grid = model_grid(brain_focus.brain_region(fixed, mask), [2.0] * 3, "LIA", 16)
    deformable = _deformable_in_ball(grid, centre, 12.0 + brain_focus.TAPER_END_MM)
    region = brain_focus.deformable_region(fixed, mask)
    assert all(n < s for n, s in zip(region[1], fixed.GetSize()))  # a real restriction
    full = compose_on_fixed(deformable, affine, fixed)
    restricted = compose_on_fixed(deformable, affine, fixed, region)
    np.testing.assert_allclose(restricted, full, atol=1e-6)
    inverse_region = moving_region(fixed, region, affine, moving)
    assert 0 < np.prod(inverse_region[1]) < np.prod(moving.GetSize())
    np.testing.assert_allclose(compose_inverse_on_moving(deformable, affine, moving, inverse_region), compose_inverse_on_moving(deformable, affine, moving), atol=1e-6)
    # the Jacobian differentiated only in the box: the same numbers there, det A outside
    displacement = vector_image(full, fixed)
    whole = jacobian_of(displacement)
    boxed = jacobian_of(displacement, region, affine)
    torch.testing.assert_close(boxed, whole, atol=1e-4, rtol=0)


@pytest.fixture
def sphere_masks(monkeypatch):
    config = BrainMaskConfig()
    monkeypatch.setattr(bm, "load_mask_network", lambda model=None: (SphereNetwork(22.0, config.spacing, offset=(0.0, 0.0, 0.0)), config))


def _whole_head(seed, shift=(0.0, 0.0, 0.0), structure=(0.0, 0.0, 0.0)):
    """A 'head': a blob brain in the middle of a bright ring (skull and scalp) and a noisy background;
    ``structure``: where (in [-1, 1] grid units) an extra bright structure sits inside the brain."""
    brain = blob_volume(size=(64, 64, 64), spacing=(1.5, 1.5, 1.5), origin=(-47.25 + shift[0], -47.25 + shift[1], -47.25 + shift[2]), seed=seed)
    array = sitk.GetArrayFromImage(brain)
    k, j, i = np.meshgrid(*(np.linspace(-1, 1, 64),) * 3, indexing="ij")
    r = np.sqrt(i**2 + j**2 + k**2)
    array = array + 0.5 * np.exp(-(((i - structure[0]) ** 2 + (j - structure[1]) ** 2 + (k - structure[2]) ** 2) / 0.12**2))
    rng = np.random.default_rng(seed)
    array = array + 0.9 * ((r > 0.9) & (r < 1.05)) + 0.05 + 0.02 * rng.standard_normal(array.shape)
    head = sitk.GetImageFromArray(array.astype(np.float32))
    head.CopyInformation(brain)
    return head


def test_whole_head_field_is_affine_far_from_the_brain_and_smooth_everywhere(sphere_masks, monkeypatch):
    monkeypatch.setattr(brain_focus, "MIN_BRAIN_ML", 10.0)  # the phantom's "brain" is 45 mL
    fixed, moving = _whole_head(1), _whole_head(2, shift=(2.0, -1.5, 1.0), structure=(0.08, -0.06, 0.05))
    options = RegisterOptions(model="none", refine_iterations=12, qc=False)
    options.brain_mask = "auto"
    result = register_images(fixed, moving, options, log=lambda *_: None)
    metrics = result.metrics
    assert metrics["brain_mask"]["used"] and metrics["brain_mask"]["fixed"]["source"] == "network"
    assert metrics["folding_region"] == "fixed brain mask"
    assert result.brain_mask.GetSize() == fixed.GetSize() and result.displacement.GetSize() == fixed.GetSize()
    field = sitk.GetArrayFromImage(result.displacement)
    assert np.isfinite(field).all()
    # far from the brain (beyond the taper's end) the field is the affine's alone
    matrix, offset = np.array(result.affine.GetMatrix()).reshape(3, 3), None
    from VoxelMorphRegLib.image.displacement import affine_field, affine_parts

    matrix, offset = affine_parts(result.affine)
    affine_only = affine_field(matrix, offset, fixed)
    size = fixed.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    points = np.stack([i, j, k], -1) @ index_to_physical_matrix(fixed).T + np.array(fixed.GetOrigin())
    centre = np.array(fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in size]))
    far = np.linalg.norm(points - centre, axis=-1) > 22.0 + brain_focus.TAPER_END_MM + 8.0  # + the mask's and the velocity grid's voxels
    assert far.sum() > 1000
    np.testing.assert_allclose(field[far], affine_only[far], atol=2e-3)
    near = np.linalg.norm(points - centre, axis=-1) < 20.0
    assert np.abs(field[near] - affine_only[near]).max() > 0.05  # the deformation does act on the brain
    # no tearing anywhere: neighbouring voxels' displacements differ by less than 1 mm
    for axis in range(3):
        assert np.abs(np.diff(field, axis=axis)).max() < 1.0


def test_two_stripped_scans_run_exactly_as_without_the_focus(oblique_image):
    moving = blob_volume(size=(36, 32, 28), spacing=(1.2, 0.9, 1.5), direction=rotation(0.3, -0.2, 0.5), origin=(11.0, -19.0, 6.0), seed=3)
    results = {}
    for mode in ("auto", "off"):
        options = RegisterOptions(model="none", refine_iterations=4, qc=False)
        options.brain_mask = mode
        results[mode] = register_images(oblique_image, moving, options, log=lambda *_: None)
    # the same run: the same grid, the same field (to the field's 1/1024 mm quantum: threaded sums may round differently)
    assert results["auto"].metrics["model_grid"] == results["off"].metrics["model_grid"]
    np.testing.assert_allclose(sitk.GetArrayFromImage(results["auto"].displacement), sitk.GetArrayFromImage(results["off"].displacement), atol=1.01 / 1024, rtol=0)
    report = results["auto"].metrics["brain_mask"]
    assert report["used"] is False and report["fixed"]["source"] == report["moving"]["source"] == "stripped"
    assert results["auto"].metrics["folding_region"] == "whole fixed grid"


def test_a_scan_without_a_brain_is_registered_as_it_is_with_a_warning(monkeypatch):
    config = BrainMaskConfig()
    monkeypatch.setattr(bm, "load_mask_network", lambda model=None: (SphereNetwork(3.0, config.spacing, offset=(0.0, 0.0, 0.0)), config))
    fixed, moving = _whole_head(1), _whole_head(2, shift=(2.0, -1.5, 1.0))
    lines, results = [], {}
    for mode in ("auto", "off"):
        options = RegisterOptions(model="none", refine_iterations=3, qc=False)
        options.brain_mask = mode
        results[mode] = register_images(fixed, moving, options, log=lines.append)
    report = results["auto"].metrics["brain_mask"]
    assert report["used"] is False and "registered as they are" in report["fallback"]
    assert any(line.startswith("warning: the brain mask of the fixed image found") for line in lines)
    assert results["auto"].metrics["model_grid"] == results["off"].metrics["model_grid"]
    np.testing.assert_allclose(sitk.GetArrayFromImage(results["auto"].displacement), sitk.GetArrayFromImage(results["off"].displacement), atol=1.01 / 1024, rtol=0)


def test_a_stripped_scan_with_negative_values_inside_is_recognised():
    image = blob_volume(size=(40, 36, 32))
    array = sitk.GetArrayFromImage(image)
    inside = array > 0
    array[inside] = (array[inside] - array[inside].mean()) / array[inside].std()  # z-scored brain, background exactly 0
    zscored = sitk.GetImageFromArray(array)
    zscored.CopyInformation(image)
    assert bm.looks_stripped(zscored)
    assert not bm.looks_stripped(_whole_head(1))
    mask = bm.brain_mask(zscored, "auto")
    assert mask.source == "stripped"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask.mask) > 0, array != 0)
