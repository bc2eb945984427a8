"""image/nifti_writer.py: the pipelines' NIfTI outputs are ordinary gzip files that every reader
reads, with the size and SHA-256 the manifest records, and a short ITK write is refused."""

import gzip
import hashlib
import struct

import numpy as np
import pytest
import SimpleITK as sitk

from VoxelMorphRegLib.image.nifti_writer import write_nifti
from VoxelMorphRegLib.image.stored_data import DamagedFile, scan_file


def _volume(dtype=np.float32):
    rng = np.random.default_rng(0)
    array = (rng.normal(size=(12, 14, 16)) * 100).astype(dtype)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.5, 2.0))
    image.SetOrigin((4.0, -3.0, 2.0))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    return image, array


@pytest.mark.parametrize("name", ["warped.nii.gz", "warped.nii"])
@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_written_file_reads_back_exactly_and_its_hash_is_the_files(tmp_path, name, dtype, gzip_library):
    image, array = _volume(dtype)
    path = tmp_path / name
    entry = write_nifti(image, path)
    data = path.read_bytes()
    assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    back = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), array)
    for get in ("GetOrigin", "GetSpacing", "GetDirection"):
        np.testing.assert_allclose(getattr(back, get)(), getattr(image, get)(), atol=1e-6)
    stored = scan_file(path)  # the project's own strict reader: complete stream, every voxel present
    assert stored.voxels == array.size and stored.compressed == name.endswith(".gz")
    if name.endswith(".gz"):
        raw = gzip.decompress(data)  # Python's gzip (CRC and length checked): an ordinary gzip stream
        offset = int(struct.unpack("<f", raw[108:112])[0])
        np.testing.assert_array_equal(np.frombuffer(raw[offset:], dtype).reshape(array.shape), array)
        assert len(data) < len(raw)
    assert not [p for p in tmp_path.iterdir() if p.name != name]  # no uncompressed temporary left


def test_a_short_write_by_itk_is_refused_and_leaves_no_file(tmp_path, monkeypatch):
    from VoxelMorphRegLib.image import nifti_writer

    image, _ = _volume()
    real = sitk.WriteImage

    def short_write(image, path, *args, **kwargs):
        real(image, path, *args, **kwargs)
        with open(path, "r+b") as handle:
            handle.truncate(handle.seek(0, 2) - 8)

    monkeypatch.setattr(nifti_writer.sitk, "WriteImage", short_write)
    # 352 header bytes + 12 x 14 x 16 float32 voxels = 11104
    with pytest.raises(DamagedFile, match="is truncated: ITK wrote 11096 of its 11104 bytes"):
        write_nifti(image, tmp_path / "warped.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_only_nifti_names(tmp_path):
    image, _ = _volume()
    with pytest.raises(ValueError, match="not a NIfTI file name"):
        write_nifti(image, tmp_path / "warped.nrrd")


def test_a_displacement_field_written_by_either_deflater_reads_back_the_same(tmp_path, monkeypatch):
    """The two deflaters give different bytes but the same field (RAS on disk, LPS back in ITK)."""
    from VoxelMorphRegLib.image import gzip_streams

    if gzip_streams.isal_zlib is None:
        pytest.skip("the isal package is not installed")
    rng = np.random.default_rng(1)
    field = np.round(rng.normal(size=(12, 14, 16, 3)) * 1024) / 1024
    image = sitk.GetImageFromArray(field, isVector=True)
    image.SetSpacing((1.0, 1.5, 2.0))
    entries = {}
    entries["isal"] = write_nifti(image, tmp_path / "isal.nii.gz", displacement=True, float32=True)
    monkeypatch.setattr(gzip_streams, "isal_zlib", None)
    entries["zlib"] = write_nifti(image, tmp_path / "zlib.nii.gz", displacement=True, float32=True)
    assert entries["isal"]["sha256"] != entries["zlib"]["sha256"]
    raw = {name: gzip.decompress((tmp_path / f"{name}.nii.gz").read_bytes()) for name in entries}
    assert raw["isal"] == raw["zlib"]  # the same NIfTI inside
    for name in entries:
        back = sitk.ReadImage(str(tmp_path / f"{name}.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), field)
