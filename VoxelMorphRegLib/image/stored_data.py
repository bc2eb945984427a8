"""Checks on an image file's stored bytes that ITK's readers do not make.

ITK's NIfTI reader reads a ``.nii`` or ``.nii.gz`` cut short with the missing voxels as zeros and
turns NaN and infinite voxels into 0; its MetaImage reader prints to stderr before failing on a
truncated ``.mha``. :func:`scan_file` reads the voxel data of these formats the way they are
stored, with NumPy and ISA-L's or Python's gzip/zlib (:mod:`.gzip_streams`; both check a compressed
stream's end and CRC), and
raises :class:`DamagedFile` for data that is cut short or corrupt. It also counts the non-finite
voxels of floating-point data, which the caller refuses. Other formats (NRRD, DICOM...) are
left to ITK, whose readers report short data themselves.
"""

from __future__ import annotations

import contextlib
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .gzip_streams import STREAM_ERRORS, open_gzip

CHUNK = 1 << 23  # bytes read at a time (8 MiB)

# NIfTI datatype codes -> (NumPy type, kind): kind "float" data is scanned for NaN/Inf.
_NIFTI_TYPES = {
    2: ("u1", "int"), 4: ("i2", "int"), 8: ("i4", "int"), 16: ("f4", "float"), 64: ("f8", "float"),
    256: ("i1", "int"), 512: ("u2", "int"), 768: ("u4", "int"), 1024: ("i8", "int"), 1280: ("u8", "int"),
    32: ("c8", "complex"), 1792: ("c16", "complex"), 2048: (None, "complex"), 1536: (None, "float"),
    128: ("u1", "rgb"), 2304: ("u1", "rgb"),
}
# MetaImage element types -> NumPy type.
_META_TYPES = {
    "MET_UCHAR": "u1", "MET_CHAR": "i1", "MET_USHORT": "u2", "MET_SHORT": "i2", "MET_UINT": "u4", "MET_INT": "i4",
    "MET_ULONG_LONG": "u8", "MET_LONG_LONG": "i8", "MET_FLOAT": "f4", "MET_DOUBLE": "f8",
}


class DamagedFile(Exception):
    """The file's bytes are cut short or corrupt; the message says how (one line)."""


@dataclass
class StoredData:
    voxels: int  # number of stored values (voxels x components)
    non_finite: int  # NaN or infinite values in floating-point data (0 for integer data)
    kind: str  # "int", "float", "complex", "rgb"
    compressed: bool
    checked: bool  # False: a layout this module does not read (left to ITK)


def scan_file(path) -> StoredData | None:
    """Read the voxel data of a NIfTI or MetaImage file as stored; None for other formats."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return _scan_nifti(path)
    if name.endswith((".mha", ".mhd")):
        return _scan_meta(path)
    return None


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


@contextlib.contextmanager
def _stream_errors():
    """Turn the errors of reading a gzip or zlib stream into one-line :class:`DamagedFile` messages."""
    try:
        yield
    except EOFError:
        raise DamagedFile("is truncated: its compressed stream ends early") from None
    except STREAM_ERRORS as exc:
        raise DamagedFile(f"is corrupt: its compressed data cannot be decompressed ({str(exc).strip() or type(exc).__name__})") from None


def _count_values(stream, dtype: str | None, kind: str, expected_bytes: int) -> tuple[int, int]:
    """Read up to ``expected_bytes`` from ``stream``; return (bytes read, non-finite values)."""
    itemsize = np.dtype(dtype).itemsize if dtype else 1
    step = max(itemsize, CHUNK - CHUNK % itemsize)
    done, non_finite, carry = 0, 0, b""
    while done < expected_bytes:
        block = stream.read(min(step, expected_bytes - done))
        if not block:
            break
        done += len(block)
        if kind in ("float", "complex") and dtype:
            block = carry + block
            usable = len(block) - len(block) % itemsize
            values = np.frombuffer(block[:usable], dtype=dtype)
            non_finite += int(values.size - np.count_nonzero(np.isfinite(values)))
            carry = block[usable:]
    return done, non_finite


def _drain(stream) -> None:
    """Read a compressed stream to its end, so that its trailer (CRC, length) is checked."""
    while stream.read(CHUNK):
        pass


def _scan_nifti(path: Path) -> StoredData:
    compressed = _is_gzip(path)
    with _stream_errors(), (open_gzip(path) if compressed else open(path, "rb")) as stream:
        head = stream.read(540)
        for order in "<>":
            size = struct.unpack(order + "i", head[:4])[0] if len(head) >= 4 else 0
            if size in (348, 540):
                break
        else:
            return StoredData(0, 0, "int", compressed, False)  # not a NIfTI header: ITK will say so
        if len(head) < 348:
            raise DamagedFile(f"is truncated: {len(head)} bytes, shorter than a NIfTI header")
        if size == 348:
            dims = struct.unpack(order + "8h", head[40:56])
            datatype, bitpix = struct.unpack(order + "2h", head[70:74])
            vox_offset = int(struct.unpack(order + "f", head[108:112])[0])
            single_file = head[344:347] == b"n+1"
        else:
            if len(head) < 540:
                raise DamagedFile(f"is truncated: {len(head)} bytes, shorter than a NIfTI-2 header")
            datatype, bitpix = struct.unpack(order + "2h", head[12:16])
            dims = struct.unpack(order + "8q", head[16:80])
            vox_offset = int(struct.unpack(order + "q", head[168:176])[0])
            single_file = head[4:7] == b"n+2"
        rank = dims[0]
        if not single_file or not 1 <= rank <= 7 or any(d < 1 for d in dims[1 : rank + 1]) or bitpix <= 0:
            return StoredData(0, 0, "int", compressed, False)  # a header/image pair or an odd header: left to ITK
        dtype, kind = _NIFTI_TYPES.get(datatype, (None, "int"))
        if dtype:
            dtype = order + dtype if np.dtype(dtype).itemsize > 1 else dtype
        voxels = int(np.prod(dims[1 : rank + 1], dtype=np.int64))
        expected = voxels * bitpix // 8
        vox_offset = max(vox_offset, size)
        skip = vox_offset - len(head)
        if skip < 0:  # the data starts inside what was read as the header
            data_head = head[vox_offset:]
            stream_for_data = _Prefixed(data_head, stream)
        else:
            if len(stream.read(skip)) < skip:
                raise DamagedFile("is truncated: it ends inside its header")
            stream_for_data = stream
        done, non_finite = _count_values(stream_for_data, dtype, kind, expected)
        if done < expected:
            raise DamagedFile(f"is truncated: holds {done} of the {expected} bytes of voxel data its header declares")
        if compressed:
            _drain(stream)
    return StoredData(voxels, non_finite, kind, compressed, True)


class _Prefixed:
    """A read()-able stream: ``prefix`` bytes, then ``stream``."""

    def __init__(self, prefix: bytes, stream):
        self.prefix, self.stream = prefix, stream

    def read(self, count: int) -> bytes:
        if self.prefix:
            block, self.prefix = self.prefix[:count], self.prefix[count:]
            return block
        return self.stream.read(count)


def _meta_header(path: Path) -> tuple[dict, int]:
    """MetaImage ``Key = Value`` lines up to ElementDataFile; returns (fields, byte offset of the data)."""
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    fields, offset = {}, 0
    for line in head.splitlines(keepends=True):
        offset += len(line)
        text = line.decode("latin-1").strip()
        if "=" not in text:
            continue
        key, value = (part.strip() for part in text.split("=", 1))
        fields[key] = value
        if key == "ElementDataFile":
            return fields, offset
    raise DamagedFile("is truncated or not a MetaImage: its header has no ElementDataFile line")


class _ZlibStream:
    """read() over the zlib-decompressed bytes of ``handle``; raises EOFError if the stream ends early."""

    def __init__(self, handle):
        self.handle = handle
        self.inflater = zlib.decompressobj()
        self.buffer = b""

    def read(self, count: int) -> bytes:
        while len(self.buffer) < count and not self.inflater.eof:
            source = self.inflater.unconsumed_tail or self.handle.read(CHUNK)
            if not source:
                raise EOFError
            self.buffer += self.inflater.decompress(source, CHUNK)
        block, self.buffer = self.buffer[:count], self.buffer[count:]
        return block


def _scan_meta(path: Path) -> StoredData:
    fields, offset = _meta_header(path)
    unchecked = StoredData(0, 0, "int", False, False)
    try:
        dims = [int(v) for v in fields.get("DimSize", "").split()]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
    except ValueError:
        return unchecked
    dtype = _META_TYPES.get(fields.get("ElementType", ""))
    data_file = fields["ElementDataFile"]
    compressed = fields.get("CompressedData", "False").lower() == "true"
    if (not dims or dtype is None or fields.get("BinaryData", "True").lower() != "true" or "HeaderSize" in fields
            or data_file.split()[0] in ("LIST",) or "%" in data_file or len(data_file.split()) > 1):
        return unchecked
    if fields.get("BinaryDataByteOrderMSB", fields.get("ElementByteOrderMSB", "False")).lower() == "true":
        dtype = ">" + dtype
    elif np.dtype(dtype).itemsize > 1:
        dtype = "<" + dtype
    kind = "float" if dtype.endswith(("f4", "f8")) else "int"
    voxels = int(np.prod(dims, dtype=np.int64)) * channels
    expected = voxels * np.dtype(dtype).itemsize
    if data_file == "LOCAL":
        data_path, start = path, offset
    else:
        data_path, start = path.parent / data_file, 0
        if not data_path.is_file():
            raise DamagedFile(f"names a data file that is missing: {data_file}")
    with _stream_errors(), open(data_path, "rb") as handle:
        handle.seek(start)
        if compressed:
            stream = _ZlibStream(handle)
            done, non_finite = _count_values(stream, dtype, kind, expected)
        else:
            available = data_path.stat().st_size - start
            if available < expected:
                raise DamagedFile(f"is truncated: holds {max(available, 0)} of the {expected} bytes of voxel data its header declares")
            return StoredData(voxels, 0, kind, False, True)  # ITK keeps NaN in MetaImage: checked on the image
        if done < expected:
            raise DamagedFile(f"is truncated: holds {done} of the {expected} bytes of voxel data its header declares")
    return StoredData(voxels, non_finite, kind, compressed, True)
