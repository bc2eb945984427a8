"""Batch registration: many pairs in one process, the model loaded once.

``voxelmorphreg batch --pairs pairs.csv --out DIR`` (see README: Batch registration).

* The pairs come from a CSV (:func:`read_pairs`): columns ``fixed``, ``moving`` and optionally
  ``moving_labels``, ``fixed_labels``, ``name``; relative paths are relative to the CSV's folder.
* The model is loaded once (:func:`~.loaded_model.load_model`) and reused for every pair.
* A reader thread reads and checks the next pairs' files (:func:`~..image.pair_files.read_pair`) while
  the current pair computes; at most :data:`READ_AHEAD` pairs are held in memory beyond the
  current one.
* With a network and ``batch_size > 1`` (default on CUDA: :data:`CUDA_BATCH_SIZE`), consecutive
  pairs whose model grids have the same shape get their velocities from one batched forward
  pass (:func:`batched_velocities`); a batch that does not fit on the device falls back to one
  pair at a time. Everything else (affine, refinement, fields, writing) is per pair.
* Each pair's outputs go to ``DIR/<name>/`` through the same commit step as ``register``
  (:func:`~.register.write_outputs`, image/output_set.py): complete and of one run, or the
  folder's earlier content untouched.
* A pair that fails gets its one-line error in the summary; the others go on.
* ``DIR/summary.csv`` (:data:`~VoxelMorphRegLib.contract.BATCH_SUMMARY_COLUMNS`) lists every pair
  of the CSV, in order, with its status; it is written atomically before the first pair and
  after every pair, so an interruption leaves it consistent with the folders.
* Ctrl-C, SIGTERM or SIGHUP: the pair in progress is discarded (its temporary files removed, its
  folder as it was) and marked ``interrupted``; every finished pair stays complete; exit 130/143/129.
* A pair whose folder already holds a complete set (manifest checks) of the same inputs and
  settings, newer than its input files, is ``skipped`` (``overwrite`` registers it again).
"""

from __future__ import annotations

import csv
import io
import os
import re
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .. import contract
from ..contract import BATCH_SUMMARY, BATCH_SUMMARY_COLUMNS, PairDone, PairStarted, RegisterOptions, Stage, no_events
from ..errors import CancelledError, VoxelMorphRegError

INPUT_COLUMNS = ("fixed", "moving", "moving_labels", "fixed_labels", "name")
READ_AHEAD = 2  # pairs read beyond the current one (or beyond the current batch)
CUDA_BATCH_SIZE = 4  # pairs per forward pass on CUDA unless --batch-size says otherwise
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".gz")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=-]{0,199}$")


class BatchFailed(VoxelMorphRegError):
    """Some pairs failed (the others are complete): exit code 1."""

    exit_code = 1


@dataclass
class BatchPair:
    """One row of the pairs CSV, paths resolved."""

    name: str
    fixed: Path
    moving: Path
    moving_labels: Path | None = None
    fixed_labels: Path | None = None
    row: int = 0  # line number in the CSV (the header is line 1)


@dataclass
class PairOutcome:
    """One row of summary.csv."""

    name: str
    status: str = "pending"
    seconds: float | None = None
    error: str = ""
    mean_dice_before: float | None = None
    mean_dice_after: float | None = None
    folding_fraction: float | None = None
    out: str = ""

    def row(self) -> dict:
        def text(value):
            if value is None:
                return ""
            if isinstance(value, float):
                return repr(round(value, 6))
            return str(value)

        return {column: text(getattr(self, column)) for column in BATCH_SUMMARY_COLUMNS}


@dataclass
class BatchSummary:
    out: Path
    outcomes: list = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)


# ---------------------------------------------------------------------------- the pairs CSV


def _stem(path: Path) -> str:
    name = path.name
    for suffix in _IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name


def read_pairs(csv_path) -> list[BatchPair]:
    """The pairs of ``csv_path``; one-line errors (exit 2) for a file that cannot be used at all.

    Missing image files are not checked here: such a pair fails alone, the others go on."""
    csv_path = Path(csv_path)
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise VoxelMorphRegError(f"--pairs {csv_path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise VoxelMorphRegError(f"--pairs {csv_path}: not a text (UTF-8) CSV file") from None
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    unknown = [c for c in columns if c not in INPUT_COLUMNS]
    if unknown or "fixed" not in columns or "moving" not in columns:
        what = f"unknown column(s) {', '.join(map(repr, unknown))}" if unknown else "no 'fixed' and 'moving' columns"
        raise VoxelMorphRegError(f"--pairs {csv_path}: {what}; the columns are fixed, moving and optionally moving_labels, fixed_labels, name")
    base = csv_path.parent
    pairs, names = [], {}
    for number, raw in enumerate(reader, start=2):
        if None in raw:
            raise VoxelMorphRegError(f"--pairs {csv_path} line {number}: more cells than columns")
        row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if not any(row.values()):
            continue  # a blank line
        if not row.get("fixed") or not row.get("moving"):
            raise VoxelMorphRegError(f"--pairs {csv_path} line {number}: 'fixed' and 'moving' are both needed")

        def path(column):
            value = row.get(column)
            if not value:
                return None
            p = Path(os.path.expanduser(value))
            return p if p.is_absolute() else base / p

        fixed, moving = path("fixed"), path("moving")
        name = row.get("name") or f"{_stem(moving)}_to_{_stem(fixed)}"
        if not _NAME.match(name) or name in (".", "..") or name == BATCH_SUMMARY:
            raise VoxelMorphRegError(f"--pairs {csv_path} line {number}: {name!r} cannot be a folder name (letters, digits and _ . + = -, not starting with . or -)")
        if name.lower() in names:  # folder names: "A" and "a" are one folder on macOS and Windows
            hint = "" if row.get("name") else "; give the pairs a 'name' column"
            raise VoxelMorphRegError(f"--pairs {csv_path} line {number}: pair name {name!r} repeats line {names[name.lower()]}{hint}")
        names[name.lower()] = number
        pairs.append(BatchPair(name, fixed, moving, path("moving_labels"), path("fixed_labels"), number))
    if not pairs:
        raise VoxelMorphRegError(f"--pairs {csv_path}: no pairs")
    return pairs


# ---------------------------------------------------------------------------- summary.csv


def write_summary(out: Path, outcomes) -> Path:
    """summary.csv, atomically (a reader sees the earlier or the new version, never a mix)."""
    from ..image.io import write_bytes

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(BATCH_SUMMARY_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for outcome in outcomes:
        writer.writerow(outcome.row())
    try:
        return write_bytes(buffer.getvalue().encode("utf-8"), out / BATCH_SUMMARY)
    except OSError as exc:
        raise VoxelMorphRegError(f"{out / BATCH_SUMMARY}: cannot be written ({exc.strerror or exc})") from None


def _metrics_outcome(outcome: PairOutcome, metrics: dict) -> None:
    dice = metrics.get("dice") or {}
    outcome.mean_dice_before = dice.get("mean_before")
    outcome.mean_dice_after = dice.get("mean_after")
    outcome.folding_fraction = metrics.get("folding_fraction")


# ---------------------------------------------------------------------------- re-runs


def settings_of(options: RegisterOptions, model) -> dict:
    """What a pair's metrics.json must say for its set to count as this batch's result."""
    return {"model": model.description, "affine": bool(options.affine), "refine_iterations": model.refinement["iterations"],
            "refine_smoothness": model.refinement["smoothness"], "refine_learning_rate": model.refinement["learning_rate"],
            "integration_steps": model.integration_steps}


def expected_files(options: RegisterOptions, pair: BatchPair) -> set:
    names = {contract.WARPED, contract.DISPLACEMENT}
    if options.inverse:
        names.add(contract.INVERSE_DISPLACEMENT)
    if options.jacobian:
        names.add(contract.JACOBIAN)
    if pair.moving_labels is not None:
        names.add(contract.WARPED_LABELS)
    names = {contract.output_name(n, options.compress) for n in names}
    if options.qc:
        names.add(contract.QC_FIGURE)
    return names


def completed_metrics(folder: Path, pair: BatchPair, options: RegisterOptions, settings: dict, verify: bool = True) -> dict | None:
    """The metrics of ``folder`` when it holds a complete set of this pair with these settings, else None.

    ``verify=False`` skips the checksums of the files (the plan made before the first pair; each
    pair's files are checked at its turn)."""
    import json

    from ..image.output_set import check_manifest

    metrics_path = folder / contract.METRICS
    if not metrics_path.is_file() or (verify and check_manifest(folder, contract.METRICS)):
        return None
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, ValueError):
        return None
    inputs = metrics.get("inputs") or {}
    wanted = {"fixed": str(pair.fixed), "moving": str(pair.moving), "moving_labels": pair.moving_labels and str(pair.moving_labels),
              "fixed_labels": pair.fixed_labels and str(pair.fixed_labels)}
    if any(inputs.get(k) != v for k, v in wanted.items()):
        return None
    if any(metrics.get(k) != v for k, v in settings.items()):
        return None
    if set(metrics.get("files", {})) != expected_files(options, pair):
        return None
    written = metrics_path.stat().st_mtime
    for path in wanted.values():
        try:
            if path and os.stat(path).st_mtime > written:
                return None  # an input changed since
        except OSError:
            return None
    return metrics


# ---------------------------------------------------------------------------- the network in batches


def batched_velocities(model, prepared: list):
    """The network's velocity for each of ``prepared`` (PreparedPair, same model-grid shape), from
    one forward pass; pairs that do not fit together are done one at a time, and a pair that does
    not fit alone gets ``None`` (register_images then runs it with its own CPU fall-back)."""
    import torch

    if not prepared:
        return []
    network = model.module()
    device = model.device

    def forward(group):
        with torch.inference_mode():
            moving = torch.cat([p.moving_t for p in group]).to(device)
            fixed = torch.cat([p.fixed_t for p in group]).to(device)
            velocity = network.velocity(moving, fixed)
            if device.type == "cuda":
                torch.cuda.synchronize()
            # clone(): owned tensors outside inference mode, one per pair
            return [velocity[i : i + 1].clone() for i in range(len(group))]

    try:
        return forward(prepared)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
    velocities = []
    for p in prepared:
        try:
            velocities.append(forward([p]))
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            velocities.append(None)
    return [v[0] if v is not None else None for v in velocities]


# ---------------------------------------------------------------------------- the run


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, VoxelMorphRegError):
        return str(exc)
    from .memory_guard import allocation_failure

    message = allocation_failure(exc)
    if message:
        return message
    text = str(exc).strip().splitlines()
    return f"unexpected {type(exc).__name__}: {text[-1] if text else ''}".strip()


class _Reader:
    """Reads pairs in order on one background thread, a few ahead of the one being registered."""

    def __init__(self, pairs, wanted):
        from ..image.pair_files import read_pair

        self._read = read_pair
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-reader")
        self._pairs = pairs
        self._queue = deque(i for i in range(len(pairs)) if wanted[i])
        self._futures = {}

    def ensure(self, upto: int) -> None:
        """Have the reads of the wanted pairs with index <= ``upto`` started."""
        while self._queue and self._queue[0] <= upto:
            i = self._queue.popleft()
            p = self._pairs[i]
            self._futures[i] = self._pool.submit(self._read, p.fixed, p.moving, p.moving_labels, p.fixed_labels)

    def take(self, i: int):
        """The PairImages of pair ``i`` (raises its read error)."""
        self.ensure(i)
        future = self._futures.pop(i, None)
        if future is None:  # not planned for reading (a pair found incomplete at its turn): read now
            p = self._pairs[i]
            return self._read(p.fixed, p.moving, p.moving_labels, p.fixed_labels)
        return future.result()

    def peek(self, i: int):
        """Pair ``i``'s images if they read without error (waits for them), else None; keeps them for :meth:`take`."""
        self.ensure(i)
        future = self._futures.get(i)
        if future is None or future.exception() is not None:
            return None
        return future.result()

    def close(self) -> None:
        for future in self._futures.values():
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._futures.clear()


def run_batch(pairs, out, options: RegisterOptions | None = None, log=print, events=no_events, should_stop=lambda: False,
              overwrite: bool = False, batch_size: int | None = None, model=None) -> BatchSummary:
    """Register every pair into ``out/<name>/``; see the module's docstring.

    Returns the summary when every pair is ok or skipped; raises :class:`BatchFailed` (exit 1)
    when some failed, and re-raises KeyboardInterrupt (Ctrl-C, SIGTERM) after writing the
    summary. ``model``: a LoadedModel to use instead of loading ``options.model``."""
    from ..image.io import ensure_output_folder
    from .loaded_model import load_model
    from .register import prepare_pair, register_images, write_outputs

    options = options or RegisterOptions()
    if batch_size is not None and batch_size < 1:
        raise VoxelMorphRegError(f"--batch-size must be >= 1, got {batch_size}")
    started = time.perf_counter()
    out = ensure_output_folder(out)
    total = len(pairs)
    outcomes = [PairOutcome(p.name, out=str(out / p.name)) for p in pairs]
    summary = BatchSummary(out, outcomes)
    write_summary(out, outcomes)  # before any work: a bad --out fails here, in one line
    if model is None:
        text = f"loading the model for {total} pairs"
        log(text)
        events(Stage("model", 0, text))
        model = load_model(options)
    settings = settings_of(options, model)
    if batch_size is None:
        batch_size = CUDA_BATCH_SIZE if model.device.type == "cuda" else 1
    batching = batch_size > 1 and model.has_network

    earlier = {}
    for i, p in enumerate(pairs):
        if not overwrite:
            metrics = completed_metrics(out / p.name, p, options, settings, verify=False)
            if metrics is not None:
                earlier[i] = metrics
    wanted = [i not in earlier for i in range(total)]
    reader = _Reader(pairs, wanted)
    ahead = {}  # pair index -> (PreparedPair, velocity, seconds spent) computed with an earlier pair's batch
    failed_early = {}  # pair index -> exception raised while it was prepared with an earlier pair's batch
    current = None
    try:
        for i, p in enumerate(pairs):
            outcome = current = outcomes[i]  # from here on, a stop marks this pair interrupted unless it has ended
            prefix = f"[{i + 1}/{total} {p.name}]"
            events(PairStarted(p.name, i + 1, total))
            if i in earlier and completed_metrics(out / p.name, p, options, settings) is None:
                del earlier[i]  # its files do not check out after all: registered again
                wanted[i] = True
            if i in earlier:
                outcome.status = "skipped"
                _metrics_outcome(outcome, earlier[i])
                log(f"{prefix} skipped: {out / p.name} already holds its complete results")
                _finish_pair(out, outcomes, outcome, i, total, events)
                continue
            pair_started = time.perf_counter()
            pair_log = (lambda text, prefix=prefix: log(f"{prefix} {text}"))
            try:
                if i in failed_early:
                    raise failed_early.pop(i)
                log(f"{prefix} reading {p.moving.name} and {p.fixed.name}")
                reader.ensure(_next_wanted(wanted, i, batch_size + READ_AHEAD))  # the next pairs are read while this one computes
                images = reader.take(i)
                # offset: seconds of this pair's work done at another pair's turn (> 0: prepared with an
                # earlier pair's batch; < 0: this turn prepared later pairs of its batch)
                prepared, velocity, share, offset = ahead.pop(i, (None, None, None, 0.0))
                if batching and prepared is None:
                    prepared, velocity, share, offset = _prepare_batch(i, images, pairs, wanted, reader, options, model, batch_size, ahead, failed_early, pair_log, should_stop)
                pair_started -= offset
                result = register_images(images.fixed, images.moving, options, images.moving_labels, images.fixed_labels, pair_log, should_stop,
                                         model=model, prepared=prepared, velocity=velocity)
                if share is not None:
                    result.metrics["seconds"]["network"] = round(share, 3)  # this pair's share of the batched forward pass
                write_outputs(out / p.name, images, result, options, pair_started, pair_log)
                metrics = result.metrics
                outcome.status = "ok"
                _metrics_outcome(outcome, metrics)
                outcome.seconds = round(time.perf_counter() - pair_started, 3)
                log(f"{prefix} done in {outcome.seconds:.1f} s")
            except CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 -- one pair's failure, whatever it is, must not stop the others
                outcome.status, outcome.error = "failed", _one_line(exc)
                outcome.seconds = round(time.perf_counter() - pair_started, 3)
                log(f"{prefix} failed: {outcome.error}")
            finally:
                # This pair's images and results (two fields of 165 MB each on a 160x192x224 grid) are
                # released before the next pair computes, whether it succeeded or not, not when the
                # next pair's replace them.
                images = result = prepared = velocity = None
            _finish_pair(out, outcomes, outcome, i, total, events)
            if should_stop():
                raise CancelledError("batch stopped")
    except (KeyboardInterrupt, CancelledError):
        if current is not None and current.status == "pending":
            current.status = "interrupted"
            current.error = "interrupted"
        write_summary(out, outcomes)
        raise
    finally:
        reader.close()
    summary.seconds = time.perf_counter() - started
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        first = failed[0]
        raise BatchFailed(f"{len(failed)} of {total} pairs failed (first: {first.name}: {first.error}); every pair's status is in {out / BATCH_SUMMARY}")
    return summary


def _finish_pair(out, outcomes, outcome, i, total, events) -> None:
    write_summary(out, outcomes)
    events(PairDone(outcome.name, i + 1, total, outcome.status, outcome.seconds, outcome.error, outcome.out, outcome.row()))


def _next_wanted(wanted, i, count) -> int:
    """The index of the ``count``-th pair to register after ``i`` (or the last one)."""
    last = i
    for j in range(i + 1, len(wanted)):
        if wanted[j]:
            last = j
            count -= 1
            if count <= 0:
                break
    return last


def _prepare_batch(i, images, pairs, wanted, reader, options, model, batch_size, ahead, failed_early, log, should_stop):
    """Prepare pair ``i`` and the next wanted pairs whose model grid has the same shape (up to
    ``batch_size`` in all), run the network on them together; keep the others' results in ``ahead``
    as (PreparedPair, velocity, share of the forward pass, seconds spent on it now).
    Returns pair ``i``'s (PreparedPair, velocity, share, -seconds spent now on the others)."""
    from .register import prepare_pair

    first = prepare_pair(images.fixed, images.moving, options, model, log, should_stop)
    group = [(i, first, first.elapsed)]
    shape = tuple(first.fixed_t.shape)
    other_grid = 0.0
    for j in range(i + 1, len(pairs)):
        if len(group) >= batch_size:
            break
        if not wanted[j] or j in ahead or j in failed_early:
            continue
        other = reader.peek(j)
        if other is None:
            break  # a read error: that pair fails at its turn
        try:
            prepared = prepare_pair(other.fixed, other.moving, options, model, log, should_stop)
        except VoxelMorphRegError as exc:
            failed_early[j] = exc
            continue
        if tuple(prepared.fixed_t.shape) != shape:
            ahead[j] = (prepared, None, None, prepared.elapsed)  # another grid: its own forward pass at its turn
            other_grid = prepared.elapsed
            break
        group.append((j, prepared, prepared.elapsed))
    network_started = time.perf_counter()
    velocities = batched_velocities(model, [g[1] for g in group])
    share = (time.perf_counter() - network_started) / len(group)
    device = model.device.type.upper()
    log(f"network on {len(group)} pairs in one batch on {device} ({share * len(group):.2f} s)" if len(group) > 1 else f"[ 40%] network inference on {device}")
    others = other_grid
    for (j, prepared, elapsed), velocity in zip(group[1:], velocities[1:]):
        ahead[j] = (prepared, velocity, share, elapsed + share)
        others += elapsed + share
    return first, velocities[0], share, -others
