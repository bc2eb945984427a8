"""Damaged and hostile input files: each is refused with one line naming the file and the fault.

ITK alone reads a truncated NIfTI with the missing voxels as zeros and turns NaN into 0, and
accepts sheared direction matrices; these tests fail without the checks of image/stored_data.py
and image/io.py.
"""

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import blob_volume

from VoxelMorphRegLib.errors import VoxelMorphRegError
from VoxelMorphRegLib.frontends.cli import main
from VoxelMorphRegLib.image.io import read_labels, read_volume


def _save(image, path, compress=True):
    sitk.WriteImage(image, str(path), useCompression=compress)
    return path


def _cut(path, fraction=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


@pytest.mark.parametrize("suffix, compress", [(".nii.gz", True), (".nii", False), (".mha", True), (".mha", False), (".nrrd", True)])
def test_a_truncated_file_is_refused(tmp_path, suffix, compress):
    path = _cut(_save(blob_volume(size=(24, 20, 16)), tmp_path / f"cut{suffix}", compress))
    with pytest.raises(VoxelMorphRegError, match=r"truncated|expected \d+ bytes") as error:
        read_volume(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_a_truncated_label_map_is_refused(tmp_path):
    labels = sitk.Cast(blob_volume(size=(24, 20, 16)) > 0.2, sitk.sitkUInt8)
    path = _cut(_save(labels, tmp_path / "labels.nii.gz"))
    with pytest.raises(VoxelMorphRegError, match="truncated"):
        read_labels(path)


@pytest.mark.parametrize("where", ["middle", "crc", "block type"])
def test_corrupt_compressed_data_is_refused(tmp_path, gzip_library, where):
    """Damage the inflater reports itself (a deflate block of the reserved type: zlib.error or
    ISA-L's IsalError) as well as damage that only the CRC check at the end finds."""
    path = _save(blob_volume(size=(24, 20, 16)), tmp_path / "corrupt.nii.gz")
    data = bytearray(path.read_bytes())
    assert data[3] == 0  # ITK's gzip header: 10 bytes, no optional fields; the first deflate block starts at byte 10
    if where == "block type":
        data[10] |= 0x06  # BTYPE = 11, reserved
    else:
        spoiled = range(len(data) // 2, len(data) // 2 + 64) if where == "middle" else range(len(data) - 8, len(data) - 4)
        for i in spoiled:
            data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(VoxelMorphRegError, match="corrupt") as error:
        read_volume(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_a_truncated_gzip_stream_is_refused_with_either_inflater(tmp_path, gzip_library):
    path = _cut(_save(blob_volume(size=(24, 20, 16)), tmp_path / "cut.nii.gz"), 0.97)  # voxels complete or nearly, trailer gone
    with pytest.raises(VoxelMorphRegError, match="truncated"):
        read_volume(path)


def test_a_header_alone_is_refused(tmp_path):
    path = _cut(_save(blob_volume(size=(24, 20, 16)), tmp_path / "header.nii", compress=False), 0.01)
    with pytest.raises(VoxelMorphRegError, match="truncated"):
        read_volume(path)


@pytest.mark.parametrize("suffix, compress", [(".nii.gz", True), (".nii", False), (".nrrd", True), (".mha", True), (".mha", False)])
def test_nan_and_inf_are_refused_in_every_format(tmp_path, suffix, compress):
    array = sitk.GetArrayFromImage(blob_volume(size=(24, 20, 16)))
    array[3, 4, 5], array[6, 7, 8], array[9, 9, 9] = np.nan, np.inf, -np.inf
    path = _save(sitk.GetImageFromArray(array), tmp_path / f"nan{suffix}", compress)
    with pytest.raises(VoxelMorphRegError, match="3 voxels are NaN or infinite"):
        read_volume(path)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_complex_voxels_are_refused(tmp_path, suffix):
    array = sitk.GetArrayFromImage(blob_volume(size=(12, 10, 8)))
    path = _save(sitk.GetImageFromArray((array + 1j * array).astype(np.complex64)), tmp_path / f"complex{suffix}")
    with pytest.raises(VoxelMorphRegError, match="complex voxels|components per voxel"):
        read_volume(path)


def test_a_sheared_direction_is_refused(tmp_path):
    image = blob_volume(size=(24, 20, 16))
    image.SetDirection([1.0, 0.3, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0])  # det 1: not caught by a determinant check
    path = _save(image, tmp_path / "sheared.mha")
    with pytest.raises(VoxelMorphRegError, match="not orthogonal"):
        read_volume(path)
    rotated = blob_volume(size=(24, 20, 16), direction=[[0, 1, 0], [-1, 0, 0], [0, 0, 1]])
    assert read_volume(_save(rotated, tmp_path / "rotated.mha")).GetSize() == (24, 20, 16)


@pytest.mark.parametrize("role", ["fixed", "moving"])
def test_the_command_line_names_the_damaged_file(tmp_path, capsys, role):
    good = _save(blob_volume(size=(24, 24, 24)), tmp_path / "good.nii.gz")
    bad = _cut(_save(blob_volume(size=(24, 24, 24), seed=1), tmp_path / "bad.nii.gz"))
    fixed, moving = (bad, good) if role == "fixed" else (good, bad)
    code = main(["register", str(fixed), str(moving), "--out", str(tmp_path / "out"), "--model", "none", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"voxelmorphreg: error: {role} image {bad}: is truncated"), err
    assert not (tmp_path / "out" / "warped.nii.gz").exists()


def test_a_sheared_fixed_image_is_refused_by_register(tmp_path, capsys):
    good = _save(blob_volume(size=(24, 24, 24)), tmp_path / "good.nii.gz")
    sheared = blob_volume(size=(24, 24, 24))
    sheared.SetDirection([1.0, 0.0, 0.0, 0.25, 1.0, 0.0, 0.0, 0.0, 1.0])
    path = _save(sheared, tmp_path / "sheared.mha")
    code = main(["register", str(path), str(good), "--out", str(tmp_path / "out"), "--model", "none", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"voxelmorphreg: error: fixed image {path}: direction matrix is not orthogonal"), err
