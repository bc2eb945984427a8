"""Which run a hidden output file belongs to, the lock that tells live runs from dead ones, and
cleaning up after runs that died.

Every file a run writes first has a hidden name of that run, ``.voxelmorphreg-<run>-<name>``, and
the run holds a lock on ``.voxelmorphreg-<run>.lock`` (``flock``; the operating system releases it
when the process dies, even on SIGKILL). :func:`clean_stale` removes what runs whose lock is free
left behind, and puts back the earlier files that a run killed in the middle of its commit had
moved aside (``.voxelmorphreg-<run>-earlier-<name>``).
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from ..errors import VoxelMorphRegError
from .output_manifest import manifest_run

PREFIX = ".voxelmorphreg-"
OWN = re.compile(r"^\.voxelmorphreg-(?P<run>\d+-[0-9a-f]{8})(?P<rest>\.lock|-.+)$")
EARLIER = "-earlier-"  # .voxelmorphreg-<run>-earlier-<name>: a file of the earlier set, moved aside during a commit


class RunLock:
    """A lock file held for the run's life; the OS releases it when the process dies."""

    def __init__(self, path: Path):
        self.path = path
        self.handle = None
        for _ in range(3):
            try:
                handle = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except OSError as exc:
                raise VoxelMorphRegError(f"{path.parent}: output folder cannot be written ({exc.strerror or exc})") from None
            if try_lock(handle):
                os.write(handle, f"pid {os.getpid()}\n".encode())
                try:
                    same = os.path.samestat(os.fstat(handle), os.stat(path))
                except OSError:
                    same = False
                if same:  # not removed by a run that found it before it was locked
                    self.handle = handle
                    return
            os.close(handle)
        raise VoxelMorphRegError(f"{path.parent}: cannot lock a file in the output folder")

    def release(self) -> None:
        if self.handle is None:
            return
        if os.name == "posix":
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.close(self.handle)
        else:  # Windows: a file open elsewhere cannot be removed
            os.close(self.handle)
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self.handle = None


def try_lock(handle: int) -> bool:
    if os.name == "posix":
        import fcntl

        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False
    return True  # Windows: holding the file open is the lock


def owner_gone(lock: Path) -> bool:
    """True when the run that made ``lock`` has ended (its lock is free)."""
    if os.name != "posix":
        try:
            os.unlink(lock)
            return True
        except FileNotFoundError:
            return True
        except OSError:
            return False
    try:
        handle = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        return try_lock(handle)  # the lock is released with the handle below
    finally:
        os.close(handle)


def clean_stale(folder, keep: str | None = None) -> list[str]:
    """Remove what runs that have ended left under :data:`PREFIX` names in ``folder``; return those names.

    A run killed during its commit had moved the earlier set's files aside: they are put back unless
    the folder's manifest is that run's own (its commit was complete)."""
    folder = Path(folder)
    runs: dict[str, list[Path]] = {}
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    for name in names:
        match = OWN.match(name)
        if match and match["run"] != keep:
            runs.setdefault(match["run"], []).append(folder / name)
    removed = []
    for run, paths in runs.items():
        lock = folder / f"{PREFIX}{run}.lock"
        if lock.exists() and not owner_gone(lock):
            continue
        earlier = [p for p in paths if p.name.startswith(f"{PREFIX}{run}{EARLIER}")]
        committed = any(manifest_run(folder / p.name[len(f"{PREFIX}{run}{EARLIER}"):]) == run for p in earlier)
        for path in earlier:
            name = path.name[len(f"{PREFIX}{run}{EARLIER}"):]
            with contextlib.suppress(OSError):
                if committed:
                    os.unlink(path)
                else:
                    os.replace(path, folder / name)
            removed.append(path.name)
        for path in paths:
            if path in earlier or path == lock:
                continue
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed.append(path.name)
        with contextlib.suppress(OSError):
            os.unlink(lock)
    return removed

