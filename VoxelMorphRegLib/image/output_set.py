"""One run's output files, committed together: complete, verified and of one run, or not at all.

::

    with OutputSet(out) as outputs:             # removes what runs that died (SIGKILL, power cut) left
        outputs.add_image("warped.nii.gz", warped)   # written and verified in the background
        outputs.add_bytes("qc.png", png)
        outputs.commit(metrics, "metrics.json", replaces=ALL_OUTPUT_NAMES)

1. Every file is first written under a hidden temporary name of this run,
   ``.voxelmorphreg-<run>-<name>``, then verified: not empty, its header read back with the
   geometry of the image in memory, every byte of voxel data its header declares present and a
   compressed stream complete (end marker, CRC, length; see :mod:`.stored_data`), fsynced. A full
   disk, which ITK's NIfTI writer does not report, fails here. The pipelines' NIfTI writer
   (:mod:`.nifti_writer`) makes the data checks while it writes (ITK's plain file against its
   header, the compressed stream written and hashed by Python), so only the header is read back.
2. :meth:`OutputSet.commit` then moves the earlier run's files aside (its manifest first), moves the
   new files into place and writes the manifest last: the manifest (``metrics.json``) names every
   file of its run with its size and SHA-256, and the run's id. A reader checks a folder with
   :func:`check_manifest`. SIGINT, SIGTERM and SIGHUP are held back while the files move, and any
   failure moves the earlier files back.
3. On any error or signal before the commit, the run's temporary files are removed and the earlier
   set stays as it was. A run removes only what it wrote itself, plus the files the earlier
   manifest lists where this run writes no file of that name.
4. A run holds a lock on ``.voxelmorphreg-<run>.lock`` (``flock``; the operating system releases
   it when the process dies, even on SIGKILL). A new run into the same folder removes the
   temporary files of every run whose lock is free, and puts back the earlier files that a run
   killed in the middle of its commit had moved aside. Files not named like this are never
   touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import SimpleITK as sitk

from ..errors import VoxelMorphRegError
from .io import ensure_output_folder, file_sha256 as _sha256, verify_image_file
from .stored_data import DamagedFile

PREFIX = ".voxelmorphreg-"
_OWN = re.compile(r"^\.voxelmorphreg-(?P<run>\d+-[0-9a-f]{8})(?P<rest>\.lock|-.+)$")
_EARLIER = "-earlier-"  # .voxelmorphreg-<run>-earlier-<name>: a file of the earlier set, moved aside during a commit


class OutputSet:
    """The files of one run in ``folder``; see the module's docstring."""

    def __init__(self, folder, workers: int | None = None, quiet_native_messages: bool = True):
        self.folder = ensure_output_folder(folder)
        self.run = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._lock = _RunLock(self.folder / f"{PREFIX}{self.run}.lock")
        self.recovered = clean_stale(self.folder, keep=self.run)
        self._workers = workers or min(4, os.cpu_count() or 2)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[str, Future] = {}
        self._quiet = quiet_native_messages
        self._native: _NativeStderr | None = None
        self.ended: dict[str, float] = {}  # name -> time.perf_counter() when its file was written and verified
        self.done = False

    # ------------------------------------------------------------------ writing

    def temporary(self, name: str) -> Path:
        return self.folder / f"{PREFIX}{self.run}-{name}"

    def add_image(self, name: str, image: sitk.Image, write=None) -> None:
        """Write ``image`` (compressed where the format allows) and verify it, in the background.

        ``write(image, path)``: another writer than ``sitk.WriteImage``. One that returns
        ``{"bytes", "sha256"}`` of the file (:func:`.nifti_writer.write_nifti`) has checked its
        voxel data and hashed what it wrote; the file's header is then read back, not its data."""
        self._submit(name, _write_image, image, self.temporary(name), self.folder / name, write)

    def add_bytes(self, name: str, data: bytes) -> None:
        self._submit(name, _write_bytes, bytes(data), self.temporary(name), self.folder / name)

    def _submit(self, name, function, *args):
        if self.done:
            raise RuntimeError("this output set is already committed or discarded")
        if name in self._pending or name.startswith(PREFIX) or "/" in name or "\\" in name:
            raise ValueError(f"bad or repeated output name {name!r}")
        if self._pool is None:
            if self._quiet:
                self._native = _NativeStderr()
            self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="output-set")
        future = self._pool.submit(function, *args)
        future.add_done_callback(lambda _future: self.ended.__setitem__(name, time.perf_counter()))
        self._pending[name] = future

    def wait(self) -> dict:
        """Wait for every file; ``{name: {"bytes", "sha256"}}``, or the first failure's one-line error."""
        entries = {}
        for name, future in self._pending.items():
            entries[name] = future.result()
        return entries

    # ------------------------------------------------------------------ committing

    def commit(self, manifest: dict, manifest_name: str, replaces=()) -> dict:
        """Move the files into place together, the manifest last; returns the manifest written.

        ``manifest`` gets ``run_id`` and ``files`` (name -> bytes, sha256). ``replaces``: names an
        earlier run may have written; those this run does not write are removed where the earlier
        manifest lists them."""
        entries = self.wait()
        manifest = {**manifest, "run_id": self.run, "files": {name: entries[name] for name in sorted(entries)}}
        data = json.dumps(manifest, indent=2).encode()
        _write_bytes(data, self.temporary(manifest_name), self.folder / manifest_name)
        earlier = set(_manifest_files(self.folder / manifest_name))
        stale = [name for name in replaces if name not in entries and name != manifest_name and name in earlier]
        with _signals_held():
            moved_aside, placed = [], []
            try:
                for name in [manifest_name, *entries, *stale]:  # the earlier manifest first: a mixed folder never has one
                    if os.path.lexists(self.folder / name):
                        os.replace(self.folder / name, self._earlier(name))
                        moved_aside.append(name)
                for name in [*entries, manifest_name]:
                    os.replace(self.temporary(name), self.folder / name)
                    placed.append(name)
                _fsync_folder(self.folder)
            except OSError as exc:
                for name in reversed(placed):
                    with contextlib.suppress(OSError):
                        os.unlink(self.folder / name)
                for name in reversed(moved_aside):
                    with contextlib.suppress(OSError):
                        os.replace(self._earlier(name), self.folder / name)
                self._finish()
                raise VoxelMorphRegError(f"{self.folder}: the outputs could not be moved into place ({exc.strerror or exc}); the earlier results were kept") from None
            for name in moved_aside:
                with contextlib.suppress(OSError):
                    os.unlink(self._earlier(name))
            self._finish(success=True)
        return manifest

    def _earlier(self, name: str) -> Path:
        return self.folder / f"{PREFIX}{self.run}{_EARLIER}{name}"

    def discard(self) -> None:
        """Remove this run's temporary files; the folder keeps what it held before the run."""
        if not self.done:
            with _signals_held():
                self._finish()

    def _finish(self, success: bool = False) -> None:
        if self.done:
            return
        self.done = True
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)  # a write in flight ends before its file is removed
        for path in self.folder.glob(f"{PREFIX}{self.run}-*"):
            if path.name.startswith(f"{PREFIX}{self.run}{_EARLIER}"):
                continue  # an earlier file that could not be put back: the next run restores it
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._lock.release()
        if self._native is not None:
            self._native.restore(replay=success)

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        self.discard()
        return False


def add_to_committed_set(folder, manifest_name: str, name: str, data: bytes, manifest: dict) -> dict:
    """Add one file to the set that ``manifest`` (what :meth:`OutputSet.commit` returned) describes,
    after its commit: ``name`` is written and verified under a temporary name, then moved into place
    and the manifest rewritten to list it, both while signals are held. Used for qc.png, which is
    drawn while the images are committed. When the folder's manifest is no longer this run's (a
    later run committed meanwhile), nothing is written. Returns the manifest as written."""
    folder = Path(folder)
    if _manifest_run(folder / manifest_name) != manifest.get("run_id"):
        return manifest
    with OutputSet(folder) as extra:
        entry = _write_bytes(bytes(data), extra.temporary(name), folder / name)
        manifest = {**manifest, "files": dict(sorted({**manifest.get("files", {}), name: entry}.items()))}
        _write_bytes(json.dumps(manifest, indent=2).encode(), extra.temporary(manifest_name), folder / manifest_name)
        with _signals_held():
            os.replace(extra.temporary(name), folder / name)
            os.replace(extra.temporary(manifest_name), folder / manifest_name)
            _fsync_folder(folder)
            extra._finish(success=True)
    return manifest


def check_manifest(folder, manifest_name: str) -> list[str]:
    """What is wrong with the set in ``folder`` (empty: every file the manifest lists is there, with its size and SHA-256)."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / manifest_name).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"{manifest_name}: no readable manifest ({type(exc).__name__})"]
    problems = []
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != entry.get("bytes") or _sha256(path) != entry.get("sha256"):
            problems.append(f"{name}: not the file its manifest names (size or checksum differs)")
    return problems


def _manifest_files(path: Path) -> list[str]:
    try:
        files = json.loads(path.read_text()).get("files", {})
        return [name for name in files if isinstance(name, str) and not name.startswith(".") and "/" not in name and "\\" not in name]
    except (OSError, ValueError, AttributeError):
        return []


# ---------------------------------------------------------------------- one file


def _write_image(image: sitk.Image, temporary: Path, final: Path, write=None) -> dict:
    checked = None
    try:
        if write is None:
            sitk.WriteImage(image, str(temporary), useCompression=True)
        else:
            checked = write(image, temporary)
    except DamagedFile as exc:
        raise _write_error(final, str(exc)) from None
    except OSError as exc:
        raise _write_error(final, exc.strerror or str(exc)) from None
    except RuntimeError as exc:
        raise _write_error(final, str(exc).strip().splitlines()[-1] if str(exc).strip() else "ITK could not write it") from None
    except MemoryError:
        raise _write_error(final, "not enough memory") from None
    try:
        # A writer that returns {"bytes", "sha256"} (image/nifti_writer.py) has checked the voxel
        # data itself and hashed what it wrote: only the header is read back here.
        verify_image_file(temporary, image, data=checked is None)
        _fsync(temporary)
    except DamagedFile as exc:
        raise _write_error(final, str(exc)) from None
    except (OSError, RuntimeError) as exc:
        raise _write_error(final, getattr(exc, "strerror", None) or str(exc).strip().splitlines()[-1]) from None
    if checked is not None:
        return {"bytes": checked["bytes"], "sha256": checked["sha256"]}
    return {"bytes": temporary.stat().st_size, "sha256": _sha256(temporary)}


def _write_bytes(data: bytes, temporary: Path, final: Path) -> dict:
    try:
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        digest = hashlib.sha256(data).hexdigest()
        if temporary.stat().st_size != len(data) or _sha256(temporary) != digest:
            raise DamagedFile(f"reads back as {temporary.stat().st_size} bytes that differ from the {len(data)} written")
    except DamagedFile as exc:
        raise _write_error(final, str(exc)) from None
    except OSError as exc:
        raise _write_error(final, exc.strerror or str(exc)) from None
    return {"bytes": len(data), "sha256": digest}


def _write_error(final: Path, reason: str) -> VoxelMorphRegError:
    try:
        free = shutil.disk_usage(final.parent).free
        room = f"; {free / 1e6:.1f} MB free on that disk"
    except OSError:
        room = ""
    return VoxelMorphRegError(f"{final}: could not be written completely ({reason}){room}; the earlier results were kept")


def _fsync(path: Path) -> None:
    handle = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _fsync_folder(folder: Path) -> None:
    if os.name != "posix":
        return
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    except OSError:
        pass  # some file systems do not sync folders
    finally:
        os.close(handle)


# ---------------------------------------------------------------------- runs that died


class _RunLock:
    """A lock file held for the run's life; the OS releases it when the process dies."""

    def __init__(self, path: Path):
        self.path = path
        self.handle = None
        for _ in range(3):
            try:
                handle = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except OSError as exc:
                raise VoxelMorphRegError(f"{path.parent}: output folder cannot be written ({exc.strerror or exc})") from None
            if _try_lock(handle):
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


def _try_lock(handle: int) -> bool:
    if os.name == "posix":
        import fcntl

        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False
    return True  # Windows: holding the file open is the lock


def _owner_gone(lock: Path) -> bool:
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
        return _try_lock(handle)  # the lock is released with the handle below
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
        match = _OWN.match(name)
        if match and match["run"] != keep:
            runs.setdefault(match["run"], []).append(folder / name)
    removed = []
    for run, paths in runs.items():
        lock = folder / f"{PREFIX}{run}.lock"
        if lock.exists() and not _owner_gone(lock):
            continue
        earlier = [p for p in paths if p.name.startswith(f"{PREFIX}{run}{_EARLIER}")]
        committed = any(_manifest_run(folder / p.name[len(f"{PREFIX}{run}{_EARLIER}"):]) == run for p in earlier)
        for path in earlier:
            name = path.name[len(f"{PREFIX}{run}{_EARLIER}"):]
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


def _manifest_run(path: Path):
    try:
        return json.loads(path.read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


# ---------------------------------------------------------------------- signals and native messages

_HELD_SIGNALS = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]


@contextlib.contextmanager
def _signals_held():
    """Hold SIGINT, SIGTERM and SIGHUP back while files move; deliver the first one afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = {}
    for number in _HELD_SIGNALS:
        handler = signal.getsignal(number)
        if handler in (signal.SIG_IGN, None):
            continue
        previous[number] = handler
        signal.signal(number, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if received:
            number = received[0]
            handler = previous[number]
            if callable(handler):
                handler(number, None)
            else:
                signal.raise_signal(number)


class _NativeStderr:
    """Catch what C libraries print on file descriptor 2 while files are written (NIfTI's
    ``** ERROR: NWAD`` lines on a full disk): shown again after a success, dropped after a
    failure, whose one-line error says what went wrong."""

    def __init__(self):
        self.saved = None
        try:
            sys.stderr.flush()
            import tempfile

            self.capture = tempfile.TemporaryFile()
            self.saved = os.dup(2)
            os.dup2(self.capture.fileno(), 2)
        except (OSError, ValueError, AttributeError):
            self.saved = None

    def restore(self, replay: bool) -> None:
        if self.saved is None:
            return
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.saved = None
        self.capture.seek(0)
        text = self.capture.read()
        self.capture.close()
        if replay and text:
            with contextlib.suppress(OSError):
                os.write(2, text)
