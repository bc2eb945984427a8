"""Reading volumes from every source ITK handles, with exact geometry, and the checks on them."""

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import blob_volume, rotation

from VoxelMorphRegLib.errors import VoxelMorphRegError
from VoxelMorphRegLib.image.io import read_labels, read_volume, same_grid


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_formats_keep_oblique_anisotropic_geometry(tmp_path, suffix):
    image = blob_volume(size=(20, 18, 16), spacing=(0.8, 1.1, 2.0), direction=rotation(0.2, 0.3, -0.1), origin=(3.0, -4.0, 5.0))
    path = tmp_path / f"volume{suffix}"
    sitk.WriteImage(image, str(path))
    back = read_volume(path)
    assert back.GetPixelID() == sitk.sitkFloat32
    assert same_grid(back, image, tolerance=1e-4)
    assert np.allclose(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image), atol=1e-6)


def test_dicom_series_folder(tmp_path):
    image = sitk.Cast(sitk.RescaleIntensity(blob_volume(size=(24, 20, 12), spacing=(0.9, 0.9, 2.5)), 0, 1000), sitk.sitkInt16)
    folder = tmp_path / "series"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(image.GetDepth()):
        slice_ = image[:, :, z]
        slice_.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1")  # series instance UID
        slice_.SetMetaData("0020|0032", "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, z))))
        slice_.SetMetaData("0020|0013", str(z))
        slice_.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        slice_.SetMetaData("0008|0060", "MR")
        writer.SetFileName(str(folder / f"slice{z:03d}.dcm"))
        writer.Execute(slice_)
    back = read_volume(folder)
    assert back.GetSize() == image.GetSize()
    assert np.allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-3)
    assert np.allclose(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def test_empty_folder_is_not_a_series(tmp_path):
    with pytest.raises(VoxelMorphRegError, match="no DICOM series"):
        read_volume(tmp_path)


def test_single_volume_4d_file_is_accepted(tmp_path):
    image = sitk.JoinSeries([blob_volume(size=(10, 10, 10))])
    path = tmp_path / "one.nii.gz"
    sitk.WriteImage(image, str(path))
    assert read_volume(path).GetDimension() == 3


def test_labels_must_be_integers(tmp_path):
    image = blob_volume(size=(10, 10, 10))
    path = tmp_path / "fractional.nii.gz"
    sitk.WriteImage(image, str(path))
    with pytest.raises(VoxelMorphRegError, match="label values must be integers"):
        read_labels(path)
    whole = sitk.Cast(sitk.Round(image * 3), sitk.sitkFloat32)  # float file holding integers: fine
    sitk.WriteImage(whole, str(path))
    assert read_labels(path).GetPixelID() == sitk.sitkInt32
