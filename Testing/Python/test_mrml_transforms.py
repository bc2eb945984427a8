"""Displacement fields <-> grid transform nodes: Slicer's own resampling agrees with SimpleITK's.

What is compared with what:

* the engine's convention: ``warped = sitk.Resample(moving, fixed, DisplacementFieldTransform(u))``
  with ``u`` a fixed-grid LPS field;
* Slicer's: the moving volume under the grid transform node, resampled onto the fixed volume by
  ``vtkSlicerVolumesLogic::ResampleVolumeToReferenceVolume`` (Volumes module logic; it builds
  IJK->RAS, the parent transform's TransformToWorld, RAS->reference IJK, inverts the chain and
  runs ``vtkImageReslice``: the same path slice views use to show a transformed volume);
* files: Slicer's transform storage node (``vtkMRMLTransformStorageNode``) writing and reading
  ``.nii.gz`` / ``.h5`` against SimpleITK reading and writing them.
"""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import require_slicer_core

sitk = pytest.importorskip("SimpleITK")
slicer = require_slicer_core()

from VoxelMorphRegLib.mrml import transforms, volumes  # noqa: E402

FLIP = np.array([-1.0, -1.0, 1.0])
NIFTI_INTENT_CODE_OFFSET = 68  # int16 in the 348-byte nifti-1 header


def rotation(ax, ay, az):
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def grid(size, spacing, origin, direction):
    image = sitk.Image(*size, sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(np.asarray(direction).flatten())
    return image


def physical_points(image):
    size = image.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n, dtype=float) for n in size[::-1]), indexing="ij")
    m = np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    return np.stack([i, j, k], -1) @ m.T + np.array(image.GetOrigin())


def smooth_field(fixed):
    """A smooth, clearly non-trivial LPS field (up to ~3 mm) on the fixed grid."""
    p = physical_points(fixed)
    u = np.stack([3.0 * np.sin(p[..., 1] / 8.0), 2.0 * np.cos(p[..., 2] / 9.0), 1.5 * np.sin(p[..., 0] / 7.0) + 0.5], -1)
    field = sitk.GetImageFromArray(u, isVector=True)
    field.CopyInformation(fixed)
    return field, u


@pytest.fixture(scope="module")
def pair():
    fixed = grid((40, 36, 30), (1.2, 1.0, 2.0), (-20.0, 10.0, -15.0), rotation(0.3, -0.2, 0.5))
    moving = grid((44, 40, 24), (1.1, 1.3, 2.5), (-25.0, 5.0, -20.0), rotation(0.0, 0.1, -0.2))
    p = physical_points(moving)
    blob = np.exp(-(((p - np.array([-2.0, 20.0, -5.0])) ** 2) / np.array([60.0, 90.0, 40.0])).sum(-1))
    array = (100.0 * blob + 10.0 * np.sin(p[..., 0] / 5.0) + 20.0).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(moving)
    field, u = smooth_field(fixed)
    warped = sitk.Resample(image, fixed, sitk.DisplacementFieldTransform(sitk.Image(field)), sitk.sitkLinear, 0.0)
    return fixed, image, field, u, warped


def message_texts(storage):
    messages = storage.GetUserMessages()
    return [messages.GetNthMessageText(i) for i in range(messages.GetNumberOfMessages())]


def write_nifti_displacement(field_lps, path):
    """A displacement field as NIfTI says it should be: intent code 1006 (DISPVECT), vectors in RAS.

    SimpleITK refuses to write intent 1006 itself for its variable-length vector pixels (ITK's
    writer converts LPS->RAS only for fixed-size vectors and throws otherwise), so: write the RAS
    vectors (intent 1007), set the intent code in the header, compress.
    """
    ras = sitk.GetImageFromArray(sitk.GetArrayFromImage(field_lps) * FLIP, isVector=True)
    ras.CopyInformation(field_lps)
    plain = Path(str(path) + ".tmp.nii")
    sitk.WriteImage(ras, str(plain))
    header = bytearray(plain.read_bytes())
    plain.unlink()
    struct.pack_into("<h", header, NIFTI_INTENT_CODE_OFFSET, 1006)
    Path(path).write_bytes(gzip.compress(bytes(header)))


def test_grid_node_from_parent_maps_p_to_p_plus_u(pair):
    fixed, _, field, u, _ = pair
    node = transforms.grid_transform_node_from_displacement(field)
    assert node.IsA("vtkMRMLGridTransformNode")
    from_parent = node.GetTransformFromParent()
    assert from_parent.IsA("vtkOrientedGridTransform") and not from_parent.GetInverseFlag()
    for ijk in [(0, 0, 0), (7, 11, 5), (39, 35, 29), (20, 3, 17)]:
        p_lps = np.array(fixed.TransformIndexToPhysicalPoint(ijk))
        p_ras = FLIP * p_lps
        q_ras = np.array(from_parent.TransformPoint(*p_ras))
        np.testing.assert_allclose(q_ras, p_ras + FLIP * u[ijk[2], ijk[1], ijk[0]], atol=1e-6)


def test_slicer_resampling_through_node_matches_engine_warp(pair):
    fixed, moving, field, _, warped = pair
    scene = slicer.vtkMRMLScene()
    fixed_node = volumes.sitk_to_volume(fixed, scene=scene, name="fixed")
    moving_node = volumes.sitk_to_volume(moving, scene=scene, name="moving")
    transform_node = transforms.grid_transform_node_from_displacement(field, name="fixed to moving")
    scene.AddNode(transform_node)
    moving_node.SetAndObserveTransformNodeID(transform_node.GetID())

    volumes_logic = slicer.vtkSlicerVolumesLogic()
    volumes_logic.SetMRMLScene(scene)
    resampled = volumes_logic.ResampleVolumeToReferenceVolume(moving_node, fixed_node)
    slicer_warped = slicer.util.arrayFromVolume(resampled)
    engine_warped = sitk.GetArrayFromImage(warped)
    inside = engine_warped != 0  # both use 0 outside the moving volume; compare where it is defined
    assert inside.mean() > 0.5
    assert np.abs(slicer_warped[inside] - engine_warped[inside]).max() < 1e-3 * np.abs(engine_warped).max()
    # Without the transform the result is visibly different: the test has teeth.
    moving_node.SetAndObserveTransformNodeID(None)
    untransformed = slicer.util.arrayFromVolume(volumes_logic.ResampleVolumeToReferenceVolume(moving_node, fixed_node))
    assert np.abs(untransformed[inside] - engine_warped[inside]).max() > 1.0


def test_displacement_from_node_round_trip(pair):
    fixed, _, field, u, _ = pair
    node = transforms.grid_transform_node_from_displacement(field)
    back = transforms.displacement_from_transform_node(node)
    np.testing.assert_allclose(sitk.GetArrayFromImage(back), u, atol=1e-12)
    np.testing.assert_allclose(back.GetOrigin(), fixed.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(back.GetDirection(), fixed.GetDirection(), atol=1e-12)
    sampled = transforms.displacement_from_transform_node(node, volumes.ijk_to_ras_from_sitk(fixed), fixed.GetSize())
    np.testing.assert_allclose(sitk.GetArrayFromImage(sampled), u, atol=1e-5)


def test_sampled_inverse_node_gives_resampling_field():
    """A transform stored as ToParent is sampled through its FromParent (the inverse)."""
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    to_parent = np.eye(4)
    to_parent[:3, 3] = (4.0, -2.0, 1.0)  # RAS translation
    node.SetMatrixTransformToParent(volumes.numpy_to_matrix(to_parent))
    reference = grid((5, 4, 3), (2.0, 2.0, 3.0), (0.0, 0.0, 0.0), np.eye(3))
    field = transforms.displacement_from_transform_node(node, volumes.ijk_to_ras_from_sitk(reference), reference.GetSize())
    np.testing.assert_allclose(sitk.GetArrayFromImage(field)[1, 2, 3], FLIP * -to_parent[:3, 3], atol=1e-9)


@pytest.mark.parametrize("extension", [".nii.gz", ".h5"])
def test_slicer_written_transform_reads_in_simpleitk_as_same_displacement(pair, tmp_path, extension):
    fixed, moving, field, u, warped = pair
    scene = slicer.vtkMRMLScene()
    node = transforms.grid_transform_node_from_displacement(field)
    scene.AddNode(node)
    storage = slicer.vtkMRMLTransformStorageNode()
    scene.AddNode(storage)
    path = tmp_path / f"slicer_written{extension}"
    storage.SetFileName(str(path))
    assert storage.WriteData(node), message_texts(storage)
    if extension == ".h5":
        transform = sitk.ReadTransform(str(path))
        if transform.GetName() == "CompositeTransform":
            transform = sitk.CompositeTransform(transform).GetNthTransform(0)
        read_back = sitk.DisplacementFieldTransform(transform).GetDisplacementField()
    else:
        read_back = sitk.ReadImage(str(path), sitk.sitkVectorFloat64)
    np.testing.assert_allclose(sitk.GetArrayFromImage(read_back), u, atol=1e-5)
    np.testing.assert_allclose(read_back.GetOrigin(), fixed.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(read_back.GetDirection(), fixed.GetDirection(), atol=1e-5)
    again = sitk.Resample(moving, fixed, sitk.DisplacementFieldTransform(sitk.Image(read_back)), sitk.sitkLinear, 0.0)
    assert np.abs(sitk.GetArrayFromImage(again) - sitk.GetArrayFromImage(warped)).max() < 1e-2


def _load_with_storage_node(path):
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLGridTransformNode")
    storage = slicer.vtkMRMLTransformStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    ok = storage.ReadData(node)
    return ok, node, message_texts(storage)


def test_standard_nifti_displacement_loads_in_slicer_without_warnings(pair, tmp_path):
    fixed, _, field, u, _ = pair
    path = tmp_path / "displacement.nii.gz"
    write_nifti_displacement(field, path)
    # SimpleITK reads the file back as the LPS field (ITK converts DISPVECT vectors RAS -> LPS) ...
    np.testing.assert_allclose(sitk.GetArrayFromImage(transforms.read_displacement(path)), u, atol=1e-5)
    # ... and Slicer loads it as a grid transform, no warning, FromParent p -> p + u_RAS.
    ok, node, messages = _load_with_storage_node(path)
    assert ok and messages == []
    from_parent = node.GetTransformFromParent()
    assert from_parent.IsA("vtkOrientedGridTransform") and not from_parent.GetInverseFlag()
    in_process = transforms.grid_transform_node_from_displacement(transforms.read_displacement(path)).GetTransformFromParent()
    for ijk in [(0, 0, 0), (7, 11, 5), (39, 35, 29), (20, 3, 17)]:
        p_ras = FLIP * np.array(fixed.TransformIndexToPhysicalPoint(ijk))
        expected = p_ras + FLIP * u[ijk[2], ijk[1], ijk[0]]
        np.testing.assert_allclose(from_parent.TransformPoint(*p_ras), expected, atol=1e-4)
        np.testing.assert_allclose(in_process.TransformPoint(*p_ras), expected, atol=1e-4)


def test_plain_simpleitk_nifti_displacement_loads_correctly_but_with_intent_warning(pair, tmp_path):
    """``sitk.WriteImage(field)`` stores intent 1007 (VECTOR) and LPS vectors: values right, Slicer warns."""
    fixed, _, field, u, _ = pair
    path = tmp_path / "plain.nii.gz"
    sitk.WriteImage(field, str(path))
    np.testing.assert_allclose(sitk.GetArrayFromImage(transforms.read_displacement(path)), u, atol=1e-5)
    ok, node, messages = _load_with_storage_node(path)
    assert ok
    assert any("1006" in m for m in messages), messages
    from_parent = node.GetTransformFromParent()
    p_ras = FLIP * np.array(fixed.TransformIndexToPhysicalPoint((7, 11, 5)))
    np.testing.assert_allclose(from_parent.TransformPoint(*p_ras), p_ras + FLIP * u[5, 11, 7], atol=1e-4)


def test_load_displacement_file_into_scene(pair, tmp_path):
    fixed, _, field, u, _ = pair
    path = tmp_path / "displacement.nii.gz"
    sitk.WriteImage(field, str(path))
    scene = slicer.vtkMRMLScene()
    node = transforms.load_displacement_as_transform_node(path, scene=scene, ijk_to_ras_matrix=volumes.ijk_to_ras_from_sitk(fixed))
    assert node.GetScene() is scene and node.GetName() == "displacement"
    back = transforms.displacement_from_transform_node(node)
    np.testing.assert_allclose(sitk.GetArrayFromImage(back), u, atol=1e-6)
