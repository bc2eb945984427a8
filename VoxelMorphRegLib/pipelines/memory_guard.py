"""Refuse a registration that would not fit in memory, before it starts, with one line.

Peak resident memory of a ``register`` run grows with three grids: the fixed image's (the
displacement field, its inverse on the way, the Jacobian, the warped image, the field's
composition with the affine, in float64 vectors), the moving image's, and the model grid (network
or refinement with autograd). Fitted on 2026-12-08 to peaks measured with ``/usr/bin/time -v``,
default settings, 2-core CPU (``python bench/whole_head_speed.py``,
bench/results/whole-head-speed-2026-12-08): the aseg pair (160x192x224, 1.41 GB), a stripped and
cropped brain pair (147x221x184, 1.29 GB), and a 256^3 whole-head pair with ``--brain-mask auto``
(2.58 GB) and ``off`` (2.67 GB); the estimate ``0.55 GB + 60 B x fixed voxels + 40 B x moving
voxels + 200 B x model-grid voxels`` is within 3 % of each (the model grid counted over the whole
field of view: the brain focus makes it smaller). The model-grid term cannot be told apart from
the others on these pairs (their grids scale with their images); 200 B keeps a coarse fixed image
with a large refinement grid on the safe side. The brain-mask network adds little (the ``auto``
run peaked lower than ``off``).
ITK and PyTorch allocation failures that still happen (a header whose spacing makes the model
grid enormous, another process taking the memory) become one-line errors through
:func:`allocation_failure`.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import SimpleITK as sitk

from ..errors import VoxelMorphRegError
from ..image.model_grid import direction_from_orientation, physical_corners

BASE_BYTES = 0.55e9  # Python, PyTorch, SimpleITK and the model loaded
FIXED_BYTES_PER_VOXEL = 60
MOVING_BYTES_PER_VOXEL = 40
MODEL_GRID_BYTES_PER_VOXEL = 200
ADVICE = ("crop the images to the head, resample the fixed image to a coarser grid (every output is written on "
          "its grid), or run on a machine with more memory")
DISABLE = "VOXELMORPHREG_NO_MEMORY_CHECK"  # set to 1 to skip the check (e.g. with plenty of swap)


def model_grid_size(fixed: sitk.Image, config) -> tuple[int, int, int]:
    """The size of the model grid ``preprocessing.grid_for`` makes, computed without allocating it."""
    direction = direction_from_orientation(config.orientation)
    corners = physical_corners(fixed) @ direction
    extent = corners.max(axis=0) - corners.min(axis=0)
    divisor = 2 ** (len(config.encoder_features) - 1)
    voxels = [max(1, math.ceil(e / s - 1e-6)) for e, s in zip(extent, config.spacing)]
    return tuple(int(math.ceil(n / divisor) * divisor) for n in voxels)


def estimate_peak_bytes(fixed_size, moving_size, grid_size) -> int:
    """Peak resident memory of one ``register`` run, in bytes (see the module's docstring)."""
    count = lambda size: float(np.prod([float(n) for n in size]))  # noqa: E731 (floats: no overflow)
    return int(BASE_BYTES + FIXED_BYTES_PER_VOXEL * count(fixed_size) + MOVING_BYTES_PER_VOXEL * count(moving_size)
               + MODEL_GRID_BYTES_PER_VOXEL * count(grid_size))


def available_bytes() -> int | None:
    """Memory this process can still use: the machine's available memory, a cgroup (container,
    Slurm) limit and ``ulimit -v``, whichever is smallest; None where it cannot be told."""
    limits = []
    if sys.platform.startswith("linux"):
        limits += [v for v in (_meminfo_available(), _cgroup_room(), _address_space_room()) if v is not None]
    elif sys.platform == "win32":
        limits += [v for v in (_windows_available(),) if v is not None]
    else:
        try:
            limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            pass
    return min(limits) if limits else None


def check_memory(fixed: sitk.Image, moving: sitk.Image, config) -> dict:
    """Raise a one-line error when the run would need more memory than is available; return the estimate."""
    grid = model_grid_size(fixed, config)
    needed = estimate_peak_bytes(fixed.GetSize(), moving.GetSize(), grid)
    room = available_bytes()
    report = {"estimated_peak_gb": round(needed / 1e9, 2), "available_gb": None if room is None else round(room / 1e9, 2)}
    if room is not None and needed > room and os.environ.get(DISABLE, "") in ("", "0"):
        raise VoxelMorphRegError(
            f"this registration needs about {_gb(needed)} of memory (fixed image {_size(fixed.GetSize())}, moving image "
            f"{_size(moving.GetSize())}, model grid {_size(grid)} at {_mm(config.spacing)} mm) but {_gb(room)} are available; {ADVICE}"
        )
    return report


def allocation_failure(exc: BaseException) -> str | None:
    """The one-line message for an exception that is a failed memory allocation, else None."""
    text = str(exc)
    if isinstance(exc, MemoryError) or any(marker in text for marker in ("Failed to allocate memory", "bad_alloc", "can't allocate memory", "not enough memory", "std::bad_array_new_length")):
        return f"out of memory; {ADVICE}"
    return None


def _gb(value: float) -> str:
    return f"{value / 1e9:.1f} GB" if value < 1e13 else f"{value / 1e12:.3g} TB"


def _size(size) -> str:
    return "x".join(str(int(n)) for n in size)


def _mm(spacing) -> str:
    values = [float(s) for s in spacing]
    return f"{values[0]:g}" if len(set(values)) == 1 else "x".join(f"{v:g}" for v in values)


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_number(path: str) -> int | None:
    try:
        with open(path) as handle:
            text = handle.read().strip()
        return None if text in ("", "max") else int(text)
    except (OSError, ValueError):
        return None


def _cgroup_room() -> int | None:
    """Room left under this process's cgroup memory limit (v2, else v1)."""
    try:
        with open("/proc/self/cgroup") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[0] == "0" and parts[1] == "":  # cgroup v2
            folder = "/sys/fs/cgroup" + parts[2]
            limit, usage = _read_number(folder + "/memory.max"), _read_number(folder + "/memory.current")
            if limit is None:
                limit, usage = _read_number("/sys/fs/cgroup/memory.max"), _read_number("/sys/fs/cgroup/memory.current")
            if limit is not None and usage is not None:
                return max(0, limit - usage)
    limit, usage = _read_number("/sys/fs/cgroup/memory/memory.limit_in_bytes"), _read_number("/sys/fs/cgroup/memory/memory.usage_in_bytes")
    if limit is not None and usage is not None and limit < 1 << 60:
        return max(0, limit - usage)
    return None


def _address_space_room() -> int | None:
    """Room left under ``ulimit -v``: the limit less the address space in use."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft in (resource.RLIM_INFINITY, -1):
            return None
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmSize:"):
                    return max(0, soft - int(line.split()[1]) * 1024)
    except (ImportError, OSError, ValueError):
        pass
    return None


def _windows_available() -> int | None:
    try:
        import ctypes

        class Status(ctypes.Structure):
            _fields_ = [("length", ctypes.c_ulong), ("load", ctypes.c_ulong), ("total", ctypes.c_ulonglong), ("available", ctypes.c_ulonglong),
                        ("page_total", ctypes.c_ulonglong), ("page_available", ctypes.c_ulonglong), ("virtual_total", ctypes.c_ulonglong),
                        ("virtual_available", ctypes.c_ulonglong), ("extended", ctypes.c_ulonglong)]

        status = Status()
        status.length = ctypes.sizeof(Status)
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):
            return int(status.available)
    except (AttributeError, OSError):
        pass
    return None
