"""Writing NIfTI outputs fast and checked: ITK writes the plain file, Python compresses it.

A run's outputs (a 160x192x224 pair: two displacement fields of 83 MB, three volumes of 28 MB)
are mostly bytes to deflate. :func:`write_nifti` lets ITK write the uncompressed ``.nii`` (header
and voxels, a fraction of a second), checks that every byte of voxel data the header declares is
on disk (ITK's NIfTI writer does not report a short write on a full disk), and then, for
``.nii.gz``, deflates it in the calling thread at level 1 (:mod:`.gzip_streams`: ISA-L where the
``isal`` package is installed, zlib with the ``Z_RLE`` strategy otherwise; both release Python's
lock, so an output set's files compress side by side; seconds and sizes there). The SHA-256 of the bytes written is
taken while they are written, so nothing is read back: an error of the write itself raises, and
the stream is complete (end marker, CRC and length) because this code wrote it.

Every reader of gzip reads these files (ITK, Slicer, ANTs, nibabel, FSL): both libraries write
ordinary gzip streams (a ``Z_RLE`` stream is ordinary deflate, only the encoder's search for
repeats is restricted to runs).

Displacement fields (``displacement=True``) go out as NIfTI displacement vectors, intent 1006:
a 1006 file holds its vectors in RAS, ITK 5.4 (the one in SimpleITK and ANTs) and Slicer's ITK
since Slicer 5.2 turn them into LPS when they read it, and Slicer warns about a displacement field
with any other intent. SimpleITK cannot write that intent itself (ITK's RAS conversion refuses its
variable-length vectors), so the RAS vectors are written with ITK's default vector intent and the
header's intent code is set before compressing.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import VoxelMorphRegError
from .gzip_streams import DEFAULT_LEVEL, gzip_compressor
from .io import file_sha256
from .stored_data import DamagedFile

NIFTI_INTENT_DISPVECT = 1006  # NIfTI-1 intent code of a displacement vector field
DEFAULT_COMPRESSION_LEVEL = DEFAULT_LEVEL
_BLOCK = 1 << 22  # bytes deflated at a time (4 MiB)


def write_nifti(image: sitk.Image, path, compression_level: int = DEFAULT_COMPRESSION_LEVEL, displacement: bool = False, float32: bool = False) -> dict:
    """Write ``image`` to ``path`` (``.nii`` or ``.nii.gz``); returns ``{"bytes", "sha256"}`` of the file.

    ``displacement``: ``image`` is a displacement field (3 components, LPS mm as ITK holds it),
    written as NIfTI displacement vectors (intent 1006, RAS; see the module's docstring).
    ``float32``: store such a field as float32 (half the bytes); exact for a field already rounded
    to a power-of-two fraction of a mm, as register's outputs are. Raises :class:`DamagedFile` when
    ITK's file is short of its voxel data, ``OSError`` when the compressed file cannot be written.
    Not atomic: write to a temporary name (an output set does)."""
    path = Path(path)
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"{path}: not a NIfTI file name (.nii or .nii.gz)")
    if displacement:
        image = _ras_vectors(image, float32)
    # Named after ``path``: when ``path`` is an output set's temporary file, so is this one, and a
    # run killed meanwhile has it removed with the rest (image/output_set.py).
    plain = path.parent / f"{path.name}.plain.nii" if name.endswith(".gz") else path
    try:
        sitk.WriteImage(image, str(plain), False)
        _check_plain(plain, displacement)
        if plain is path:
            return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
        return _deflate(plain, path, compression_level)
    finally:
        if plain is not path and plain.exists():
            plain.unlink()


def _ras_vectors(field: sitk.Image, float32: bool) -> sitk.Image:
    if field.GetDimension() != 3 or field.GetNumberOfComponentsPerPixel() != 3:
        raise ValueError("a displacement field has 3 dimensions and 3 components per voxel")
    view = sitk.GetArrayViewFromImage(field)
    vectors = view.astype(np.float32 if float32 else view.dtype)  # a copy
    vectors[..., :2] *= -1  # LPS -> RAS
    ras = sitk.GetImageFromArray(vectors, isVector=True)
    ras.CopyInformation(field)
    return ras


def _check_plain(plain: Path, displacement: bool) -> None:
    """Check the uncompressed file ITK wrote holds all its voxel data; set the intent of a displacement field."""
    with open(plain, "r+b") as stream:
        header = stream.read(348)
        if len(header) < 348:
            raise DamagedFile("its header is cut short")
        order = "<" if struct.unpack("<i", header[:4])[0] == 348 else ">"
        if struct.unpack(f"{order}i", header[:4])[0] != 348:
            raise VoxelMorphRegError(f"{plain}: ITK did not write a NIfTI-1 header")
        dims = struct.unpack(f"{order}8h", header[40:56])
        bitpix = struct.unpack(f"{order}h", header[72:74])[0]
        offset = int(struct.unpack(f"{order}f", header[108:112])[0])
        values = int(np.prod([max(d, 1) for d in dims[1:dims[0] + 1]], dtype=np.int64))
        expected = offset + values * bitpix // 8
        if displacement:
            stream.seek(68)  # intent_code (short)
            stream.write(struct.pack(f"{order}h", NIFTI_INTENT_DISPVECT))
    size = plain.stat().st_size
    if size < expected:
        raise DamagedFile(f"is truncated: ITK wrote {size} of its {expected} bytes")


def _deflate(source: Path, target: Path, level: int) -> dict:
    digest = hashlib.sha256()
    written = 0
    compressor = gzip_compressor(level)
    with open(source, "rb") as reader, open(target, "wb") as writer:
        for block in iter(lambda: reader.read(_BLOCK), b""):
            data = compressor.compress(block)
            if data:
                writer.write(data)
                digest.update(data)
                written += len(data)
        data = compressor.flush()
        writer.write(data)
        digest.update(data)
        written += len(data)
        writer.flush()
        os.fsync(writer.fileno())
    if target.stat().st_size != written:
        raise DamagedFile(f"holds {target.stat().st_size} of the {written} bytes written")
    return {"bytes": written, "sha256": digest.hexdigest()}
