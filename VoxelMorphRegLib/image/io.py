"""Reading volumes with checks that name the problem, and writing files atomically."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import VoxelMorphRegError
from .stored_data import DamagedFile, StoredData, scan_file

_LABEL_TYPES = {sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkUInt32, sitk.sitkInt32, sitk.sitkUInt64, sitk.sitkInt64}
_COMPLEX_TYPES = {sitk.sitkComplexFloat32, sitk.sitkComplexFloat64}


def _read_any(path: Path, name: str) -> tuple[sitk.Image, StoredData | None]:
    """The image and, for NIfTI and MetaImage files, what its stored data holds (see :mod:`.stored_data`)."""
    if not path.exists():
        raise VoxelMorphRegError(f"{name}: no such file or folder")
    stored = None
    if path.is_file():
        try:
            stored = scan_file(path)
        except DamagedFile as exc:
            raise VoxelMorphRegError(f"{name}: {exc}") from None
        except OSError as exc:
            raise VoxelMorphRegError(f"{name}: cannot be read ({exc.strerror or exc})") from None
        if stored is not None and stored.kind == "complex":
            raise VoxelMorphRegError(f"{name}: has complex voxels; a real-valued scalar volume is needed")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise VoxelMorphRegError(f"{name}: folder holds no DICOM series")
            files = reader.GetGDCMSeriesFileNames(str(path), series[0])
            reader.SetFileNames(files)
            return reader.Execute(), None
        return sitk.ReadImage(str(path)), stored
    except VoxelMorphRegError:
        raise
    except RuntimeError as exc:
        raise VoxelMorphRegError(f"{name}: cannot be read as an image ({_itk_reason(exc)})") from None
    except MemoryError:
        raise VoxelMorphRegError(f"{name}: not enough memory to read it") from None


def _itk_reason(exc: Exception) -> str:
    """The informative line of an ITK reader's exception."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    nrrd = [line for line in lines if line.startswith("[nrrd]")]
    if nrrd:  # teem's messages: the last one is the cause
        return "NRRD: " + nrrd[-1].split(":", 1)[-1].strip()
    first = next((line for line in lines if "ERROR" in line or "Could not" in line or "Unable" in line), "")
    return first or "unknown format or corrupt file"


def check_volume(image: sitk.Image, name: str) -> None:
    """Raise a one-line error unless ``image`` is a finite, non-constant 3D scalar volume on an orthogonal grid."""
    if image.GetPixelID() in _COMPLEX_TYPES:
        raise VoxelMorphRegError(f"{name}: has complex voxels; a real-valued scalar volume is needed")
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
    check_direction(image, name)
    array = sitk.GetArrayViewFromImage(image)
    if not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise VoxelMorphRegError(f"{name}: {bad} voxels are NaN or infinite")
    if float(array.max()) == float(array.min()):
        raise VoxelMorphRegError(f"{name}: image is constant (every voxel is {float(array.min()):g}); nothing to register")


def check_direction(image: sitk.Image, name: str, tolerance: float = 1e-3) -> None:
    """Raise a one-line error unless the image axes are orthonormal (a rotation, reflections allowed).

    A sheared or scaled direction matrix is refused: NIfTI cannot store it (writers orthogonalise it
    silently, moving voxels by millimetres) and the fields would not land on the image's grid."""
    direction = np.array(image.GetDirection(), dtype=float).reshape(image.GetDimension(), image.GetDimension())
    if not np.all(np.isfinite(direction)):
        raise VoxelMorphRegError(f"{name}: direction matrix has non-finite entries")
    error = float(np.abs(direction.T @ direction - np.eye(len(direction))).max())
    if error > tolerance:
        raise VoxelMorphRegError(
            f"{name}: direction matrix is not orthogonal (sheared or scaled axes, largest |D^T D - I| entry {error:.3g}); "
            "resample the image onto a grid with orthogonal axes first"
        )


def _refuse_non_finite(stored: StoredData | None, name: str) -> None:
    # ITK's NIfTI reader turns NaN and infinite voxels into 0: they are counted in the stored data.
    if stored is not None and stored.non_finite:
        raise VoxelMorphRegError(f"{name}: {stored.non_finite} voxels are NaN or infinite")


def read_volume(path, name: str | None = None, keep_type: bool = False) -> sitk.Image:
    """Read a 3D scalar volume (any ITK format or a DICOM folder) as float32 (``keep_type``: in its
    stored pixel type), with checks."""
    path = Path(path)
    name = name or str(path)
    image, stored = _read_any(path, name)
    _refuse_non_finite(stored, name)
    # A 4D file with one volume, or a 3D file stored as 4D with a singleton, is common.
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    check_volume(image, name)
    return image if keep_type else sitk.Cast(image, sitk.sitkFloat32)


def read_labels(path, reference: sitk.Image | None = None, name: str | None = None) -> sitk.Image:
    """Read an integer label map; with ``reference``, require the same grid as that image."""
    path = Path(path)
    name = name or str(path)
    image, stored = _read_any(path, name)
    _refuse_non_finite(stored, name)
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() != 3 or image.GetPixelID() in _COMPLEX_TYPES:
        raise VoxelMorphRegError(f"{name}: a label map must be a 3D scalar image")
    if reference is None:
        check_direction(image, name)
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


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process's umask. Reading it means setting it, so threads writing files side by side
    (the output set, the demo's inputs) take turns: another thread's read in between would get 0."""
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return mask


def write_image(image: sitk.Image, path) -> Path:
    """Write ``image`` atomically (compressed where the format allows), verified before it gets its name.

    A run's set of outputs goes through :class:`~.output_set.OutputSet` instead (all or nothing)."""
    path = Path(path)
    try:
        with atomic_path(path) as temporary:
            sitk.WriteImage(image, temporary, useCompression=True)
            verify_image_file(temporary, image)
    except RuntimeError as exc:
        raise VoxelMorphRegError(f"{path}: cannot be written ({str(exc).strip().splitlines()[-1]})") from None
    except DamagedFile as exc:
        raise VoxelMorphRegError(f"{path}: could not be written completely ({exc})") from None
    except OSError as exc:
        raise VoxelMorphRegError(f"{path}: cannot be written ({exc.strerror or exc})") from None
    return path


def verify_image_file(path, image: sitk.Image, data: bool = True) -> None:
    """Raise :class:`DamagedFile` unless the file just written at ``path`` holds ``image``'s grid and all
    of its voxel data (ITK's NIfTI writer does not report a short write on a full disk).

    ``data=False``: the header only (for a writer that checked the data itself)."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise DamagedFile("is empty")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise DamagedFile("its header cannot be read back") from None
    if reader.GetSize() != image.GetSize() or reader.GetNumberOfComponents() != image.GetNumberOfComponentsPerPixel():
        raise DamagedFile(f"reads back as size {reader.GetSize()} x {reader.GetNumberOfComponents()}, not {image.GetSize()} x {image.GetNumberOfComponentsPerPixel()}")
    for what, back, held in (("spacing", reader.GetSpacing(), image.GetSpacing()), ("origin", reader.GetOrigin(), image.GetOrigin()), ("direction", reader.GetDirection(), image.GetDirection())):
        if not np.allclose(back, held, rtol=1e-5, atol=1e-4):
            raise DamagedFile(f"reads back with another {what}")
    if not data:
        return
    stored = scan_file(path)
    if stored is None or not stored.checked:
        sitk.ReadImage(str(path))  # formats ITK checks itself (a short NRRD or MetaImage raises)
    elif stored.voxels != int(np.prod(image.GetSize(), dtype=np.int64)) * image.GetNumberOfComponentsPerPixel():
        raise DamagedFile(f"holds {stored.voxels} values, not the image's")


def file_sha256(path) -> str:
    """SHA-256 (hex) of a file's bytes, read 4 MiB at a time."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_bytes(data: bytes, path) -> Path:
    """Write ``data`` atomically; a full disk or an unwritable file is a one-line error, the earlier file kept."""
    path = Path(path)
    try:
        with atomic_path(path) as temporary:
            with open(temporary, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            if os.path.getsize(temporary) != len(data):
                raise OSError(f"{os.path.getsize(temporary)} of {len(data)} bytes written")
    except OSError as exc:
        raise VoxelMorphRegError(f"{path}: cannot be written ({exc.strerror or exc}); the earlier file, if any, was kept") from None
    return path


def write_nifti_displacement(field: sitk.Image, path, compression_level: int = 6, float32: bool = False) -> Path:
    """Write a displacement field (3 components, mm, LPS as ITK holds it) as NIfTI with intent 1006
    (RAS vectors; see :mod:`.nifti_writer`). Not atomic: write to a temporary name.
    ``float32``: store the vectors as float32; exact for a field already rounded to a power-of-two
    fraction of a mm, as register's outputs are."""
    from .nifti_writer import write_nifti

    write_nifti(field, path, compression_level=compression_level, displacement=True, float32=float32)
    return Path(path)
