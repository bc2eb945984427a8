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

This file is the set and its commit; one file's writing and checks are in :mod:`.verified_writes`,
the manifest in :mod:`.output_manifest`, the runs' locks and the clean-up after dead runs in
:mod:`.run_lock`, the signals held back and the C libraries' messages in :mod:`.commit_guards`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import SimpleITK as sitk

from ..errors import VoxelMorphRegError
from .commit_guards import NativeStderr, signals_held
from .io import ensure_output_folder
# check_manifest, clean_stale and PREFIX are importable from here as before.
from .output_manifest import check_manifest, manifest_files, manifest_run  # noqa: F401
from .run_lock import EARLIER, PREFIX, RunLock, clean_stale  # noqa: F401
from .verified_writes import fsync_folder, write_verified_bytes, write_verified_image


class OutputSet:
    """The files of one run in ``folder``; see the module's docstring."""

    def __init__(self, folder, workers: int | None = None, quiet_native_messages: bool = True):
        self.folder = ensure_output_folder(folder)
        self.run = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._lock = RunLock(self.folder / f"{PREFIX}{self.run}.lock")
        self.recovered = clean_stale(self.folder, keep=self.run)
        self._workers = workers or min(4, os.cpu_count() or 2)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[str, Future] = {}
        self._quiet = quiet_native_messages
        self._native: NativeStderr | None = None
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
        self._submit(name, write_verified_image, image, self.temporary(name), self.folder / name, write)

    def add_bytes(self, name: str, data: bytes) -> None:
        self._submit(name, write_verified_bytes, bytes(data), self.temporary(name), self.folder / name)

    def _submit(self, name, function, *args):
        if self.done:
            raise RuntimeError("this output set is already committed or discarded")
        if name in self._pending or name.startswith(PREFIX) or "/" in name or "\\" in name:
            raise ValueError(f"bad or repeated output name {name!r}")
        if self._pool is None:
            if self._quiet:
                self._native = NativeStderr()
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
        write_verified_bytes(data, self.temporary(manifest_name), self.folder / manifest_name)
        earlier = set(manifest_files(self.folder / manifest_name))
        stale = [name for name in replaces if name not in entries and name != manifest_name and name in earlier]
        with signals_held():
            moved_aside, placed = [], []
            try:
                for name in [manifest_name, *entries, *stale]:  # the earlier manifest first: a mixed folder never has one
                    if os.path.lexists(self.folder / name):
                        os.replace(self.folder / name, self._earlier(name))
                        moved_aside.append(name)
                for name in [*entries, manifest_name]:
                    os.replace(self.temporary(name), self.folder / name)
                    placed.append(name)
                fsync_folder(self.folder)
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
        return self.folder / f"{PREFIX}{self.run}{EARLIER}{name}"

    def discard(self) -> None:
        """Remove this run's temporary files; the folder keeps what it held before the run."""
        if not self.done:
            with signals_held():
                self._finish()

    def _finish(self, success: bool = False) -> None:
        if self.done:
            return
        self.done = True
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)  # a write in flight ends before its file is removed
        for path in self.folder.glob(f"{PREFIX}{self.run}-*"):
            if path.name.startswith(f"{PREFIX}{self.run}{EARLIER}"):
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
    if manifest_run(folder / manifest_name) != manifest.get("run_id"):
        return manifest
    with OutputSet(folder) as extra:
        entry = write_verified_bytes(bytes(data), extra.temporary(name), folder / name)
        manifest = {**manifest, "files": dict(sorted({**manifest.get("files", {}), name: entry}.items()))}
        write_verified_bytes(json.dumps(manifest, indent=2).encode(), extra.temporary(manifest_name), folder / manifest_name)
        with signals_held():
            os.replace(extra.temporary(name), folder / name)
            os.replace(extra.temporary(manifest_name), folder / manifest_name)
            fsync_folder(folder)
            extra._finish(success=True)
    return manifest
