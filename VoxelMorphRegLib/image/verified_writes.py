"""One output file, written under its temporary name and verified before it may be committed.

Not empty, its header read back with the geometry of the image in memory, every byte of voxel
data present (or checked by the writer itself, :mod:`.nifti_writer`), fsynced; any failure is a
one-line error that names the final file and the room left on its disk.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import SimpleITK as sitk

from ..errors import VoxelMorphRegError
from .io import file_sha256, verify_image_file
from .stored_data import DamagedFile


def write_verified_image(image: sitk.Image, temporary: Path, final: Path, write=None) -> dict:
    checked = None
    try:
        if write is None:
            sitk.WriteImage(image, str(temporary), useCompression=True)
        else:
            checked = write(image, temporary)
    except DamagedFile as exc:
        raise write_error(final, str(exc)) from None
    except OSError as exc:
        raise write_error(final, exc.strerror or str(exc)) from None
    except RuntimeError as exc:
        raise write_error(final, str(exc).strip().splitlines()[-1] if str(exc).strip() else "ITK could not write it") from None
    except MemoryError:
        raise write_error(final, "not enough memory") from None
    try:
        # A writer that returns {"bytes", "sha256"} (image/nifti_writer.py) has checked the voxel
        # data itself and hashed what it wrote: only the header is read back here.
        verify_image_file(temporary, image, data=checked is None)
        fsync(temporary)
    except DamagedFile as exc:
        raise write_error(final, str(exc)) from None
    except (OSError, RuntimeError) as exc:
        raise write_error(final, getattr(exc, "strerror", None) or str(exc).strip().splitlines()[-1]) from None
    if checked is not None:
        return {"bytes": checked["bytes"], "sha256": checked["sha256"]}
    return {"bytes": temporary.stat().st_size, "sha256": file_sha256(temporary)}


def write_verified_bytes(data: bytes, temporary: Path, final: Path) -> dict:
    try:
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        digest = hashlib.sha256(data).hexdigest()
        if temporary.stat().st_size != len(data) or file_sha256(temporary) != digest:
            raise DamagedFile(f"reads back as {temporary.stat().st_size} bytes that differ from the {len(data)} written")
    except DamagedFile as exc:
        raise write_error(final, str(exc)) from None
    except OSError as exc:
        raise write_error(final, exc.strerror or str(exc)) from None
    return {"bytes": len(data), "sha256": digest}


def write_error(final: Path, reason: str) -> VoxelMorphRegError:
    try:
        free = shutil.disk_usage(final.parent).free
        room = f"; {free / 1e6:.1f} MB free on that disk"
    except OSError:
        room = ""
    return VoxelMorphRegError(f"{final}: could not be written completely ({reason}){room}; the earlier results were kept")


def fsync(path: Path) -> None:
    handle = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def fsync_folder(folder: Path) -> None:
    if os.name != "posix":
        return
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    except OSError:
        pass  # some file systems do not sync folders
    finally:
        os.close(handle)

