"""Volume nodes <-> SimpleITK images keep the geometry exactly (oblique, anisotropic, label maps)."""

import numpy as np
import pytest
from conftest import require_slicer_core

sitk = pytest.importorskip("SimpleITK")
slicer = require_slicer_core()

import vtk  # noqa: E402

from VoxelMorphRegLib.errors import VoxelMorphRegError  # noqa: E402
from VoxelMorphRegLib.mrml import volumes  # noqa: E402

FLIP = np.diag([-1.0, -1.0, 1.0])


def rotation(ax, ay, az):
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_image(pixel=np.float32, size=(17, 13, 11), spacing=(0.7, 1.3, 2.9), origin=(-31.5, 12.25, 48.0), angles=(0.3, -0.45, 0.8), flip_axis=False):
    rng = np.random.default_rng(0)
    array = (rng.random(size[::-1]) * 1000).astype(pixel)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    direction = rotation(*angles)
    if flip_axis:  # a left-handed frame, as in LIA / RAS-stored data
        direction = direction @ np.diag([1.0, -1.0, 1.0])
    image.SetDirection(direction.flatten())
    return image


@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()


@pytest.mark.parametrize("flip_axis", [False, True])
def test_voxel_ras_equals_flipped_lps_point(scene, flip_axis):
    image = oblique_image(flip_axis=flip_axis)
    node = volumes.sitk_to_volume(image, scene=scene, name="oblique")
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    size = image.GetSize()
    for ijk in [(0, 0, 0), (size[0] - 1, 0, 0), (0, size[1] - 1, 0), (0, 0, size[2] - 1), (5, 7, 3), (size[0] - 1, size[1] - 1, size[2] - 1)]:
        ras = matrix.MultiplyPoint((*ijk, 1.0))[:3]
        lps = image.TransformIndexToPhysicalPoint(ijk)
        np.testing.assert_allclose(ras, FLIP @ np.array(lps), atol=1e-9)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), sitk.GetArrayFromImage(image))


def test_round_trip_keeps_geometry_and_voxels(scene):
    image = oblique_image()
    node = volumes.sitk_to_volume(image, scene=scene)
    back = volumes.volume_to_sitk(node)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-12)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-12)
    assert back.GetPixelID() == image.GetPixelID()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def test_label_map_round_trip_stays_integer(scene):
    labels = sitk.Cast(oblique_image() > 500, sitk.sitkInt16) * 41 + sitk.Cast(oblique_image() > 800, sitk.sitkInt16)
    labels.CopyInformation(oblique_image())
    node = volumes.sitk_to_volume(labels, scene=scene, label=True, name="labels")
    assert node.IsA("vtkMRMLLabelMapVolumeNode")
    array = slicer.util.arrayFromVolume(node)
    assert np.issubdtype(array.dtype, np.integer)
    back = volumes.volume_to_sitk(node)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(labels))
    np.testing.assert_allclose(back.GetDirection(), labels.GetDirection(), atol=1e-12)


def test_nrrd_written_for_engine_reads_back_in_slicer_with_same_geometry(scene, tmp_path):
    """What the runner writes (SimpleITK NRRD) is what Slicer's own volume reader sees."""
    image = oblique_image()
    node = volumes.sitk_to_volume(image, scene=scene)
    path = tmp_path / "fixed.nrrd"
    sitk.WriteImage(volumes.volume_to_sitk(node), str(path), False)
    loaded = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(loaded)
    np.testing.assert_allclose(volumes.ijk_to_ras(loaded), volumes.ijk_to_ras(node), atol=1e-9)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(loaded), slicer.util.arrayFromVolume(node))


def test_linear_parent_transform_is_included(scene):
    image = oblique_image()
    node = volumes.sitk_to_volume(image, scene=scene)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    to_parent = np.eye(4)
    to_parent[:3, :3] = rotation(0.1, 0.2, -0.3)
    to_parent[:3, 3] = (5.0, -7.0, 2.5)
    transform.SetMatrixTransformToParent(volumes.numpy_to_matrix(to_parent))
    node.SetAndObserveTransformNodeID(transform.GetID())
    world = volumes.volume_to_sitk(node, world=True)
    local = volumes.volume_to_sitk(node, world=False)
    for ijk in [(0, 0, 0), (3, 4, 5), (16, 12, 10)]:
        expected_ras = to_parent @ np.array([*(FLIP @ np.array(local.TransformIndexToPhysicalPoint(ijk))), 1.0])
        np.testing.assert_allclose(FLIP @ np.array(world.TransformIndexToPhysicalPoint(ijk)), expected_ras[:3], atol=1e-9)


def test_non_linear_parent_transform_is_refused(scene):
    node = volumes.sitk_to_volume(oblique_image(), scene=scene, name="moving")
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode")
    grid_transform = slicer.vtkOrientedGridTransform()
    data = vtk.vtkImageData()
    data.SetDimensions(2, 2, 2)
    data.AllocateScalars(vtk.VTK_DOUBLE, 3)
    data.GetPointData().GetScalars().Fill(0.0)
    grid_transform.SetDisplacementGridData(data)
    grid.SetAndObserveTransformFromParent(grid_transform)
    node.SetAndObserveTransformNodeID(grid.GetID())
    with pytest.raises(VoxelMorphRegError, match="non-linear"):
        volumes.volume_to_sitk(node)


def test_sheared_geometry_is_refused():
    matrix = np.eye(4)
    matrix[0, 1] = 0.3
    with pytest.raises(VoxelMorphRegError, match="not orthogonal"):
        volumes.lps_geometry(matrix, "sheared")


def test_empty_volume_is_refused(scene):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(VoxelMorphRegError, match="no voxels"):
        volumes.volume_to_sitk(node)


def test_same_geometry_tolerates_nifti_rounding_only():
    image = oblique_image()
    matrix = volumes.ijk_to_ras_from_sitk(image)
    nudged = matrix.copy()
    nudged[:3, 3] += 1e-6
    assert volumes.same_geometry(image, nudged, image.GetSize())
    nudged[:3, 3] += 0.01
    assert not volumes.same_geometry(image, nudged, image.GetSize())
    assert not volumes.same_geometry(image, matrix, (1, 2, 3))
