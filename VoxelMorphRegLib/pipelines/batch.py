"""Batch registration: many pairs in one process, the model loaded once.

``voxelmorphreg batch --pairs pairs.csv --out DIR`` (see docs/BATCH.md). This file is the run itself;
its parts are the pairs CSV (:mod:`.batch_pairs`), summary.csv (:mod:`.batch_summary`), re-runs
(:mod:`.batch_resume`) and the network on several pairs at once (:mod:`.batch_network`).

* The pairs come from a CSV (:func:`~.batch_pairs.read_pairs`): columns ``fixed``, ``moving`` and
  optionally ``moving_labels``, ``fixed_labels``, ``name``; relative paths are relative to the CSV's folder.
* The model is loaded once (:func:`~.loaded_model.load_model`) and reused for every pair.
* A reader thread reads and checks the next pairs' files (:func:`~..image.pair_files.read_pair`) while
  the current pair computes; at most :data:`READ_AHEAD` pairs are held in memory beyond the
  current one.
* With a network and ``batch_size > 1`` (default on CUDA: :data:`CUDA_BATCH_SIZE`), consecutive
  pairs whose model grids have the same shape get their velocities from one batched forward
  pass (:func:`~.batch_network.batched_velocities`); a batch that does not fit on the device falls
  back to one pair at a time. Everything else (affine, refinement, fields, writing) is per pair.
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

import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from ..contract import BATCH_SUMMARY, PairDone, PairStarted, RegisterOptions, Stage, no_events
from ..errors import CancelledError, VoxelMorphRegError
# The parts of a batch, importable from here as before.
from .batch_network import batched_velocities, prepare_batch  # noqa: F401
from .batch_pairs import INPUT_COLUMNS, BatchPair, read_pairs  # noqa: F401
from .batch_resume import completed_metrics, expected_files, settings_of  # noqa: F401
from .batch_summary import BatchSummary, PairOutcome, write_summary  # noqa: F401

READ_AHEAD = 2  # pairs read beyond the current one (or beyond the current batch)
CUDA_BATCH_SIZE = 4  # pairs per forward pass on CUDA unless --batch-size says otherwise


class BatchFailed(VoxelMorphRegError):
    """Some pairs failed (the others are complete): exit code 1."""

    exit_code = 1


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
    from .register import register_images, write_outputs

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
                outcome.add_metrics(earlier[i])
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
                    prepared, velocity, share, offset = prepare_batch(i, images, pairs, wanted, reader, options, model, batch_size, ahead, failed_early, pair_log, should_stop)
                pair_started -= offset
                result = register_images(images.fixed, images.moving, options, images.moving_labels, images.fixed_labels, pair_log, should_stop,
                                         model=model, prepared=prepared, velocity=velocity)
                if share is not None:
                    result.metrics["seconds"]["network"] = round(share, 3)  # this pair's share of the batched forward pass
                write_outputs(out / p.name, images, result, options, pair_started, pair_log)
                metrics = result.metrics
                outcome.status = "ok"
                outcome.add_metrics(metrics)
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
