"""Reading volumes with checks that name the problem, and writing files atomically."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import VoxelMorphRegError

_LABEL_TYPES = {sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkUInt32, sitk.sitkInt32, sitk.sitkUInt64, sitk.sitkInt64}


def _read_any(path: Path, name: str) -> sitk.Image:
    if not path.exists():
        raise VoxelMorphRegError(f"{name}: no such file or folder")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise VoxelMorphRegError(f"{name}: folder holds no DICOM series")
            files = reader.GetGDCMSeriesFileNames(str(path), series[0])
            reader.SetFileNames(files)
            return reader.Execute()
        return sitk.ReadImage(str(path))
    except VoxelMorphRegError:
        raise
    except RuntimeError as exc:
        first = next((line.strip() for line in str(exc).splitlines() if "ERROR" in line or "Could not" in line or "Unable" in line), "")
        raise VoxelMorphRegError(f"{name}: cannot be read as an image ({first or 'unknown format or corrupt file'})") from None


def check_volume(image: sitk.Image, name: str) -> None:
    """Raise a one-line error unless ``image`` is a finite, non-constant 3D scalar volume."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VoxelMorphRegError(f"{name}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; a scalar volume is needed")
    if image.GetDimension() != 3:
        raise VoxelMorphRegError(f"{name}: is {image.GetDimension()}D; a 3D volume is needed")
    size = image.GetSize()
    if min(size) < 2:
        raise VoxelMorphRegError(f"{name}: size {size} is a single slice in one direction; a 3D volume is needed")
    spacing = image.GetSpacing()
    if min(spacing) <= 0 or not np.all(np.isfinite(spacing)):
        raise VoxelMorphRegError(f"{name}: invalid voxel spacing {spacing}")
    direction = np.array(image.GetDirection()).reshape(3, 3)
    if abs(abs(np.linalg.det(direction)) - 1) > 1e-3:
        raise VoxelMorphRegError(f"{name}: direction matrix is not a rotation")
    array = sitk.GetArrayViewFromImage(image)
    if not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise VoxelMorphRegError(f"{name}: {bad} voxels are NaN or infinite")
    if float(array.max()) == float(array.min()):
        raise VoxelMorphRegError(f"{name}: image is constant (every voxel is {float(array.min()):g}); nothing to register")


def read_volume(path, name: str | None = None) -> sitk.Image:
    """Read a 3D scalar volume (any ITK format or a DICOM folder) as float32, with checks."""
    path = Path(path)
    name = name or str(path)
    image = _read_any(path, name)
    # A 4D file with one volume, or a 3D file stored as 4D with a singleton, is common.
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    check_volume(image, name)
    return sitk.Cast(image, sitk.sitkFloat32)


def read_labels(path, reference: sitk.Image | None = None, name: str | None = None) -> sitk.Image:
    """Read an integer label map; with ``reference``, require the same grid as that image."""
    path = Path(path)
    name = name or str(path)
    image = _read_any(path, name)
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() != 3:
        raise VoxelMorphRegError(f"{name}: a label map must be a 3D scalar image")
    array = sitk.GetArrayViewFromImage(image)
    if image.GetPixelID() not in _LABEL_TYPES:
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise VoxelMorphRegError(f"{name}: label values must be integers")
    if array.size and (float(array.min()) < -(2**31) or float(array.max()) >= 2**31):
        raise VoxelMorphRegError(f"{name}: label values {float(array.min()):g}..{float(array.max()):g} do not fit 32-bit integers")
    if reference is not None and not same_grid(image, reference):
        raise VoxelMorphRegError(
            f"{name}: label grid (size {image.GetSize()}, spacing {_fmt(image.GetSpacing())}, origin {_fmt(image.GetOrigin())}) "
            f"differs from its image's (size {reference.GetSize()}, spacing {_fmt(reference.GetSpacing())}, origin {_fmt(reference.GetOrigin())})"
        )
    return sitk.Cast(image, sitk.sitkInt32)


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def same_grid(a: sitk.Image, b: sitk.Image, tolerance: float = 1e-4) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance * 10)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tolerance)
    )


def ensure_output_folder(folder) -> Path:
    """Create ``folder`` if needed and check it can be written, with a one-line error if not."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise VoxelMorphRegError(f"{folder}: output folder cannot be written ({exc.strerror or exc})") from None
    return folder


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A reader therefore never sees a half-written file under the final name.
    """
    path = Path(path)
    suffix = "".join(path.suffixes)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name.split('.')[0]}-", suffix=".tmp" + suffix)
    os.close(handle)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_image(image: sitk.Image, path) -> Path:
    """Write ``image`` atomically (compressed where the format allows)."""
    path = Path(path)
    try:
        with atomic_path(path) as temporary:
            sitk.WriteImage(image, temporary, useCompression=True)
    except RuntimeError as exc:
        raise VoxelMorphRegError(f"{path}: cannot be written ({str(exc).strip().splitlines()[-1]})") from None
    return path


def write_bytes(data: bytes, path) -> Path:
    path = Path(path)
    with atomic_path(path) as temporary:
        Path(temporary).write_bytes(data)
    return path
