"""Displacement fields as NIfTI displacement vectors (intent 1006): what Slicer, ITK and ANTs read.

Slicer's transform reader (``vtkMRMLTransformStorageNode::ReadFromImageFile``, every version from
5.6 to 5.10) warns "Intent code is expected to be '1006'" for any other intent; ITK 5.4 and Slicer's
ITK read a 1006 file's RAS vectors back as LPS; ANTs (antspyx) applies it as ITK does.
"""

import gzip
import struct

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")

from VoxelMorphRegLib.image.io import write_nifti_displacement  # noqa: E402


def _field():
    rng = np.random.default_rng(3)
    image = sitk.GetImageFromArray(rng.random((14, 16, 18)).astype(np.float32))
    image.SetSpacing((1.0, 1.1, 1.2))
    image.SetOrigin((3.0, -2.0, 1.0))
    image.SetDirection((0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    vectors = np.stack([np.full((14, 16, 18), 1.5), np.linspace(-1, 1, 18)[None, None, :].repeat(14, 0).repeat(16, 1), np.full((14, 16, 18), 0.9)], axis=-1).astype(np.float32)
    field = sitk.GetImageFromArray(vectors, isVector=True)
    field.CopyInformation(image)
    return image, field, vectors


def test_header_says_displacement_vector_and_holds_ras(tmp_path):
    _, field, vectors = _field()
    path = write_nifti_displacement(field, tmp_path / "displacement.nii.gz")
    raw = gzip.open(path).read()
    assert struct.unpack("<i", raw[:4])[0] == 348 and struct.unpack("<h", raw[68:70])[0] == 1006
    offset = int(struct.unpack("<f", raw[108:112])[0])
    stored = np.frombuffer(raw[offset:], np.float32).reshape(3, 14, 16, 18)  # NIfTI: vector components are the 5th dimension
    np.testing.assert_allclose(np.moveaxis(stored, 0, -1), vectors * [-1, -1, 1])  # RAS in the file
    back = sitk.ReadImage(str(path))  # ITK 5.4: RAS -> LPS
    assert back.GetMetaData("intent_code") == "1006"
    np.testing.assert_allclose(sitk.GetArrayFromImage(back), vectors, atol=1e-6)
    for get in ("GetOrigin", "GetSpacing", "GetDirection"):
        np.testing.assert_allclose(getattr(back, get)(), getattr(field, get)(), atol=1e-5)
    assert not list(tmp_path.glob(".voxelmorphreg-*"))  # the uncompressed temporary is gone


def test_slicer_reads_it_as_the_same_grid_transform_without_a_warning(tmp_path):
    from conftest import require_slicer_core

    slicer = require_slicer_core()
    from VoxelMorphRegLib.mrml import transforms

    _, field, _ = _field()
    path = write_nifti_displacement(field, tmp_path / "displacement.nii.gz")
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLGridTransformNode")
    storage = scene.AddNewNodeByClass("vtkMRMLTransformStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    messages = storage.GetUserMessages()
    texts = [messages.GetNthMessageText(i) for i in range(messages.GetNumberOfMessages())]
    assert not [t for t in texts if "Intent code" in t], texts
    ours = transforms.grid_transform_node_from_displacement(field)  # what the module builds from the field in memory
    for point in ((3.0, -2.0, 1.0), (-5.0, 4.0, 8.0), (-10.0, 7.5, 12.0)):
        np.testing.assert_allclose(node.GetTransformFromParent().TransformPoint(point), ours.GetTransformFromParent().TransformPoint(point), atol=1e-4)


def test_ants_applies_it_as_itk_does(tmp_path):
    ants = pytest.importorskip("ants")
    image, field, _ = _field()
    path = write_nifti_displacement(field, tmp_path / "displacement.nii.gz")
    sitk.WriteImage(image, str(tmp_path / "image.nii.gz"))
    expected = sitk.GetArrayFromImage(sitk.Resample(image, image, sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64)), sitk.sitkLinear, 0.0))
    moving = ants.image_read(str(tmp_path / "image.nii.gz"))
    warped = ants.apply_transforms(fixed=moving, moving=moving, transformlist=[str(path)]).numpy().transpose(2, 1, 0)
    inside = expected != 0
    assert inside.mean() > 0.3
    assert np.abs(warped - expected)[inside].max() < 1e-4


def test_register_writes_both_fields_as_displacement_vectors(tmp_path):
    """A real (tiny) register run: displacement.nii.gz and inverse_displacement.nii.gz carry intent 1006."""
    import importlib.util

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("monai") is None:
        pytest.skip("torch or monai not installed: the real engine cannot run")
    from conftest import blob_volume

    from VoxelMorphRegLib import contract
    from VoxelMorphRegLib.frontends.cli import main

    sitk.WriteImage(blob_volume(size=(24, 22, 20), seed=0), str(tmp_path / "fixed.nii.gz"))
    sitk.WriteImage(blob_volume(size=(24, 22, 20), origin=(1.0, 0.0, 0.0), seed=1), str(tmp_path / "moving.nii.gz"))
    out = tmp_path / "out"
    code = main(["register", str(tmp_path / "fixed.nii.gz"), str(tmp_path / "moving.nii.gz"), "--out", str(out), "--model", "none", "--refine", "2", "--no-affine", "--no-qc", "--quiet"])
    assert code == 0
    for name in (contract.DISPLACEMENT, contract.INVERSE_DISPLACEMENT):
        raw = gzip.open(out / name).read(348)
        assert struct.unpack("<h", raw[68:70])[0] == 1006, name
    assert struct.unpack("<h", gzip.open(out / contract.WARPED).read(348)[68:70])[0] == 0  # images keep no intent
