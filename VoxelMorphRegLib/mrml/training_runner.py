"""The training runner: scene volumes or a folder -> ``voxelmorphreg train`` in the background (Qt-free).

Sequence:

1. :meth:`TrainingRunner.start` gets the training data ready and starts
   ``python -m VoxelMorphRegLib.frontends.cli train --data CSV --atlas ATLAS --out OUT ... --events - --stop-on-stdin``
   in its own process group (:class:`.engine_process.EngineProcess`); the arguments are the
   contract's (:class:`~VoxelMorphRegLib.contract.TrainJob`, :func:`~VoxelMorphRegLib.contract.command_line`).
   Scene volumes (and their segmentations or label maps) are written into ``OUT/data/`` as NIfTI
   with a ``train.csv`` (and ``val.csv``) listing them (:mod:`.training_export`); a folder or CSV
   is passed on as it is.
2. :meth:`TrainingRunner.poll` (a timer in the GUI) or :meth:`TrainingRunner.wait` (console)
   follows the engine's events (``stage``, ``progress`` of the subject preparation, ``resumed``,
   ``step``, ``validation``, ``error``) and reads the new rows of ``OUT/log.csv``
   (:class:`.training_log.TrainingLogReader`), which a :class:`.training_plot.TrainingPlot` shows.
3. :meth:`TrainingRunner.stop` asks the engine to stop through its standard input -- it then
   saves ``last.pt`` and exits -- and kills the whole tree if it has not ended ``stop_timeout_s``
   seconds later (checked by :meth:`~TrainingRunner.poll`, so the GUI never waits). Before the
   first training step (nothing to save yet) it kills at once.
4. At the end, :attr:`TrainingRunner.checkpoint` is ``OUT/best.pt`` after a finished run; after a
   stop, ``best.pt`` if one was written, else ``last.pt`` if there is one.

Starting again with the same output folder resumes from ``OUT/last.pt`` (the engine's rule).
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..contract import BEST_CHECKPOINT, DEVICES, LAST_CHECKPOINT, TRAINING_LOG, Interrupted, Progress, Resumed, Stage, Step, TrainJob, TrainOptions, Validation, command_line
from ..errors import VoxelMorphRegError
from . import environment
from .engine_job import FAILED, IDLE, RUNNING, STOPPED, SUCCEEDED, EngineJob
from .engine_process import EngineProcess
from .runner import FRONT_END_FLAGS, _check_volume, default_engine_prefix
from .training_export import TrainingData, _write_image, first_image, write_training_data
from .training_log import TrainingLogReader, TrainingRow
from .volumes import volume_to_sitk

SIMILARITIES = ("lncc", "mse")


def check_train_options(options: TrainOptions) -> None:
    """One-line errors for settings the panel can get wrong, before anything is written or started."""
    if int(options.steps) < 1:
        raise VoxelMorphRegError("the number of training steps must be at least 1")
    if not float(options.learning_rate) > 0:
        raise VoxelMorphRegError("the learning rate must be positive")
    if options.similarity not in SIMILARITIES:
        raise VoxelMorphRegError(f"similarity must be one of {', '.join(SIMILARITIES)}")
    if float(options.smoothness_weight) < 0 or float(options.dice_weight) < 0:
        raise VoxelMorphRegError("loss weights must not be negative")
    if int(options.validate_every) < 1:
        raise VoxelMorphRegError("validate every: at least 1 step")
    if options.device not in DEVICES:
        raise VoxelMorphRegError(f"device must be one of {', '.join(DEVICES)}")


def build_train_command(prefix, job: TrainJob) -> list[str]:
    """Engine command line: ``prefix train --data DATA --atlas ATLAS --out OUT [the job's options] --events - --stop-on-stdin``."""
    return [str(p) for p in prefix] + command_line(job) + FRONT_END_FLAGS


@dataclass
class StepProgress:
    """Where the training stands, from the engine's ``step`` and ``validation`` events."""

    step: int
    total: int
    loss: float = math.nan
    seconds_per_step: float = math.nan
    eta_minutes: float = math.nan
    validation_dice: float | None = None
    best_dice: float | None = None

    @property
    def percent(self) -> int:
        return max(0, min(100, int(100 * self.step / self.total))) if self.total > 0 else 0

    def describe(self) -> str:
        parts = [f"step {self.step}/{self.total}"]
        if math.isfinite(self.loss):
            parts.append(f"loss {self.loss:.4f}")
        if self.validation_dice is not None:
            parts.append(f"validation Dice {self.validation_dice:.3f}" + (f" (best {self.best_dice:.3f})" if self.best_dice is not None else ""))
        if math.isfinite(self.eta_minutes) and self.step < self.total:
            parts.append(f"about {self.eta_minutes:.0f} min left" if self.eta_minutes >= 1 else "less than a minute left")
        return ", ".join(parts)


def _number(value) -> float:
    return math.nan if value is None else float(value)


class TrainingRunner(EngineJob):
    """One training run: start, poll or wait, stop. See the module docstring.

    Data: either ``subjects`` (scene ``(volume, segmentation-or-None)`` pairs, plus optional
    ``validation_subjects``) or ``data`` (a folder or CSV, plus optional ``validation``).
    ``atlas`` is a file, ``atlas_volume`` a volume node; with neither, the first training image.
    ``plot`` (a :class:`.training_plot.TrainingPlot`) and ``rows_callback`` get the new ``log.csv``
    rows at every :meth:`poll`.
    """

    engine_name = "training"
    final_states = (SUCCEEDED, FAILED, STOPPED)
    abort_word = "stopped"

    def __init__(
        self,
        out,
        options: TrainOptions | None = None,
        data=None,
        validation=None,
        atlas=None,
        subjects=None,
        validation_subjects=None,
        atlas_volume=None,
        engine_prefix=None,
        stop_timeout_s: float = 60.0,
        progress_callback=None,
        log_callback=None,
        rows_callback=None,
        finished_callback=None,
        plot=None,
    ):
        super().__init__(progress_callback, log_callback, finished_callback)
        self.out = Path(out) if out else None
        self.options = options or TrainOptions()
        self.data = data
        self.validation = validation
        self.atlas = atlas
        self.subjects = list(subjects) if subjects is not None else None
        self.validation_subjects = list(validation_subjects or [])
        self.atlas_volume = atlas_volume
        self.engine_prefix = list(engine_prefix) if engine_prefix else default_engine_prefix()
        self.stop_timeout_s = float(stop_timeout_s)
        self.rows_callback = rows_callback
        self.plot = plot  # a TrainingPlot (or anything with add_rows) that gets every log.csv row

        self.step = 0
        self.total_steps = int(self.options.steps)
        self.last_progress: StepProgress | None = None
        self.rows: list[TrainingRow] = []
        self.checkpoint: Path | None = None
        self.training_data: TrainingData | None = None
        self.process: EngineProcess | None = None
        self.returncode: int | None = None
        self._reader: TrainingLogReader | None = None
        self._stop_requested_at: float | None = None
        self._trained = False  # a training step of this run has been seen (a stop then has something to save)

    # -- state ---------------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self.state == RUNNING and self._stop_requested_at is not None

    @property
    def best_path(self) -> Path | None:
        return self.out / BEST_CHECKPOINT if self.out else None

    @property
    def last_path(self) -> Path | None:
        return self.out / LAST_CHECKPOINT if self.out else None

    # -- start ---------------------------------------------------------------------------------

    def _prepare(self) -> tuple:
        """``(data, validation, atlas)`` paths for the command line."""
        if self.subjects is not None:
            if len(self.subjects) + len(self.validation_subjects) == 0:
                raise VoxelMorphRegError("no training volumes selected")
            if len(self.subjects) < 2:
                raise VoxelMorphRegError("training needs at least two training volumes")
            unlabelled = [v.GetName() for v, labels in self.validation_subjects if labels is None]
            if unlabelled:
                raise VoxelMorphRegError(f"validation subjects need a segmentation: {', '.join(unlabelled)}")
            if len(self.validation_subjects) == 1:
                raise VoxelMorphRegError("validation needs at least 2 labelled subjects (Dice is measured between pairs)")
            self._set_progress(0, "writing the training volumes")
            atlas_volume = self.atlas_volume if self.atlas is None else None
            self.training_data = write_training_data(self.out / "data", self.subjects, self.validation_subjects, atlas_volume)
            atlas = self.atlas or self.training_data.atlas
            return self.training_data.train_csv, self.training_data.validation_csv, atlas
        if not self.data:
            raise VoxelMorphRegError("no training data: select volumes in the scene or a folder or CSV file")
        for role, path in (("training data", self.data), ("validation data", self.validation)):
            if path and not (Path(path).is_dir() or (Path(path).is_file() and Path(path).suffix == ".csv")):
                raise VoxelMorphRegError(f"{path}: {role} must be a folder or a .csv file")
        atlas = self.atlas
        if atlas is None and self.atlas_volume is not None:
            _check_volume(self.atlas_volume, "atlas")
            folder = self.out / "data"
            folder.mkdir(parents=True, exist_ok=True)
            atlas = _write_image(volume_to_sitk(self.atlas_volume), folder, "atlas")
        if atlas is None:
            atlas = first_image(self.data)
            if atlas is None:
                raise VoxelMorphRegError(f"{self.data}: no image found to use as the atlas; choose an atlas volume")
        return Path(self.data), Path(self.validation) if self.validation else None, atlas

    def start(self) -> "TrainingRunner":
        """Write the scene's training data (if any) and start the engine; returns at once. Raises on invalid inputs."""
        if self.state != IDLE:
            raise VoxelMorphRegError("this runner has already been started; make a new one")
        try:
            check_train_options(self.options)
            if self.out is None:
                raise VoxelMorphRegError("no output folder for the model")
            try:
                self.out.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise VoxelMorphRegError(f"{self.out}: cannot create the output folder ({exc})") from None
            data, validation, atlas = self._prepare()
            options = dataclasses.replace(self.options, val=str(validation) if validation else self.options.val)
            self.command = build_train_command(self.engine_prefix, TrainJob(str(data), str(atlas), str(self.out), options))
            self._reader = TrainingLogReader(self.out / TRAINING_LOG)
            self._add_log("$ " + subprocess.list2cmdline(self.command))
            if self.last_path.exists():
                self._add_log(f"{self.last_path} exists: the engine resumes from it")
            self.process = EngineProcess(self.command, cwd=self.out, env=environment.engine_environment())
            try:
                self.process.start()
            except OSError as exc:
                raise VoxelMorphRegError(f"cannot start the training engine ({exc})") from exc
        except BaseException as exc:
            self.state = FAILED
            self.error = str(exc)
            raise
        self.state = RUNNING
        self._set_progress(0, "starting")
        return self

    # -- output --------------------------------------------------------------------------------

    def _on_event(self, event) -> None:
        if isinstance(event, Step):
            self._trained = True
            self.step, self.total_steps = int(event.step), int(event.steps)
            eta = _number(event.eta_seconds) / 60.0
            previous = self.last_progress
            self.last_progress = StepProgress(self.step, self.total_steps, _number(event.loss), _number(event.seconds_per_step), eta,
                                              previous.validation_dice if previous else None, previous.best_dice if previous else None)
            self._show_step()
        elif isinstance(event, Validation):
            progress = self.last_progress or StepProgress(int(event.step), self.total_steps)
            progress.validation_dice, progress.best_dice = event.dice, event.best_dice
            self.last_progress = progress
            self._show_step()
        elif isinstance(event, Stage):
            if event.name == "prepare":
                self._set_progress(0, "preparing the subjects (affine alignment to the atlas)")
        elif isinstance(event, Progress) and event.stage == "prepare":
            self._set_progress(0, f"prepared {event.done}/{event.total} subjects")
        elif isinstance(event, Resumed):
            self.step = int(event.step)
            self._add_log(f"resumed from {event.path or 'last.pt'} at step {event.step}")
        elif isinstance(event, Interrupted):
            if event.step is not None:
                self.step = int(event.step)

    def _show_step(self) -> None:
        if not self.stopping and self.last_progress is not None:
            self._set_progress(self.last_progress.percent, self.last_progress.describe())

    def _read_rows(self) -> None:
        if self._reader is None:
            return
        rows = self._reader.read_new()
        if rows:
            self.rows.extend(rows)
            self._trained = True
            self.step = max(self.step, rows[-1].step)  # log.csv has a row per step (events come every few steps)
            if self.plot is not None:
                self.plot.add_rows(rows)
            if self.rows_callback:
                self.rows_callback(rows)

    def poll(self) -> bool:
        """Handle new output and log rows; end the run if the engine has ended. Returns whether the run is over."""
        if self.state != RUNNING:
            return self.finished
        for line in self.process.read_lines():
            self._handle_line(line)
        self._read_rows()
        if self._stop_requested_at is not None and not self.process.killed and self.process.returncode is None:
            if time.monotonic() - self._stop_requested_at > self.stop_timeout_s:
                self._add_log(f"the engine did not stop within {self.stop_timeout_s:g} s; killed")
                self.process.kill()
        returncode = self.process.poll()
        if returncode is None:
            return False
        for line in self.process.read_lines():
            self._handle_line(line)
        self._read_rows()
        self._finish(returncode)
        return True

    def _finish(self, returncode: int) -> None:
        self.returncode = returncode
        try:
            interrupted = any(isinstance(e, Interrupted) for e in self.events)
            if self._stop_requested_at is not None or ((interrupted or returncode == 130) and not self._engine_error):
                self.state = STOPPED
                self.checkpoint = next((p for p in (self.best_path, self.last_path) if p.exists()), None)
                self.error = "stopped"
                where = f" at step {self.step}" if self.step else ""
                saved = f"; {self.checkpoint.name} kept" if self.checkpoint else "; no checkpoint was saved"
                self._set_progress(self.progress, f"stopped{where}{saved}")
            elif returncode == 0:
                if self.best_path.exists():
                    self.state, self.checkpoint = SUCCEEDED, self.best_path
                    self._set_progress(100, f"done: {self.best_path}")
                else:
                    self.state, self.error = FAILED, f"the training engine ended without writing {self.best_path}"
            else:
                self.state = FAILED
                self.error = self._engine_error or self._fallback_error(returncode)
        finally:
            self._notify_finished()

    def attach_plot(self, plot) -> None:
        """Send the rows to ``plot`` from now on, starting with every row read so far (e.g. a new plot after a scene close)."""
        self.plot = plot
        if plot is not None and self.rows:
            plot.add_rows(self.rows)

    # -- stop and wait -------------------------------------------------------------------------

    def stop(self, wait: bool = False, timeout: float | None = None) -> None:
        """Ask the engine to stop (``stop`` on its standard input: it saves ``last.pt``); kill the tree after ``timeout`` s.

        Before the first training step there is nothing to save: the engine is killed at once.
        ``timeout`` defaults to ``stop_timeout_s``. With ``wait=False`` this returns at once and
        :meth:`poll` finishes the job (and kills when the time is up).
        """
        if self.state != RUNNING:
            return
        if timeout is not None:
            self.stop_timeout_s = float(timeout)
        if self._stop_requested_at is None:
            self._stop_requested_at = time.monotonic()
            if not self._trained:
                self._set_progress(self.progress, "stopping before the first training step")
                self.process.kill()
            else:
                self._set_progress(self.progress, "stopping: the engine saves last.pt")
                if not self.process.request_stop():
                    self.process.kill()
        if wait:
            while not self.poll():
                time.sleep(0.05)

    def _abort(self) -> None:
        self.stop(wait=True)

    def wait(self, timeout: float | None = None, interval: float = 0.1) -> Path | None:
        """Block until the run ends; return the checkpoint (``None`` when stopped before any) or raise."""
        self._wait_until_finished(timeout, interval)
        if self.state == FAILED:
            raise VoxelMorphRegError(self.error or "training failed")
        return self.checkpoint
