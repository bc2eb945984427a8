"""The training runner: scene volumes or a folder -> ``voxelmorphreg train`` in the background (Qt-free).

Sequence:

1. :meth:`TrainingRunner.start` gets the training data ready and starts
   ``python -m VoxelMorphRegLib.frontends.cli train --data CSV --atlas ATLAS --out OUT ...`` in
   its own process group (:class:`.engine_process.EngineProcess`). Scene volumes (and their
   segmentations or label maps) are written into ``OUT/data/`` as NIfTI with a ``train.csv``
   (and ``val.csv``) listing them (:func:`write_training_data`); a folder or CSV is passed on
   as it is.
2. :meth:`TrainingRunner.poll` (a timer in the GUI) or :meth:`TrainingRunner.wait` (console)
   follows the engine's ``step N/M loss=... s/step eta N min [val_dice=...]`` lines and reads the
   new rows of ``OUT/log.csv`` (:class:`TrainingLogReader`), which a
   :class:`.training_plot.TrainingPlot` shows.
3. :meth:`TrainingRunner.stop` sends SIGINT to the engine's process group -- the engine then
   saves ``last.pt`` and exits -- and kills the whole tree if it has not ended
   ``stop_timeout_s`` seconds later (checked by :meth:`~TrainingRunner.poll`, so the GUI never
   waits). On Windows it kills at once.
4. At the end, :attr:`TrainingRunner.checkpoint` is ``OUT/best.pt`` after a finished run; after a
   stop, ``best.pt`` if a validation has written one, else ``last.pt`` if there is one.

Starting again with the same output folder resumes from ``OUT/last.pt`` (the engine's rule).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import VoxelMorphRegError
from . import environment
from .engine_process import EngineProcess
from .runner import FAILED, IDLE, RUNNING, SUCCEEDED, EngineJob, _check_volume, default_engine_prefix, parse_error
from .segmentations import LabelInfo, is_label_map, is_segmentation, label_map_infos, labels_image, labels_to_array, match_fixed_labels, segment_infos
from ..pipelines.training_sources import sources_from
from .volumes import ijk_to_ras, voxel_array, volume_size, volume_to_sitk

STOPPED = "stopped"

SIMILARITIES = ("lncc", "mse")
DEVICES = ("auto", "cpu", "cuda")
LOG_COLUMNS = ("step", "loss", "similarity", "smoothness", "dice_loss", "learning_rate", "seconds_per_step", "validation_dice")

STEP_LINE = re.compile(r"^step\s+(\d+)/(\d+)\b(.*)$")
_LOSS = re.compile(r"\bloss=(\S+)")
_RATE = re.compile(r"(\S+)\s+s/step\b")
_ETA = re.compile(r"\beta\s+(\d+)\s+min\b")
_VAL = re.compile(r"\bval_dice=(\S+)")
_BEST = re.compile(r"\(best\s+([^)\s]+)\)")
_SUBJECTS = re.compile(r"^(\d+) training and (\d+) validation subjects\b")
_PREPARED = re.compile(r"^prepared \S.* in \S+ s$")
_RESUMING = re.compile(r"^resuming from .* at step (\d+)\b")
_INTERRUPTED = re.compile(r"^interrupted at step (\d+)\b")


def _float(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


# -- options and command line ----------------------------------------------------------------------


@dataclass
class TrainOptions:
    """The engine's training settings that the panel offers (see ``voxelmorphreg train --help``)."""

    steps: int = 2000
    learning_rate: float = 3e-4
    similarity: str = "lncc"  # lncc or mse
    smoothness_weight: float = 1.0
    dice_weight: float = 1.0
    validate_every: int = 100
    device: str = "auto"  # auto, cpu or cuda
    init: str | None = None  # model file to start from (fine-tuning)
    extra_arguments: list = field(default_factory=list)  # passed on unchanged, e.g. ["--skull-strip-labels"]

    def check(self) -> None:
        if int(self.steps) < 1:
            raise VoxelMorphRegError("the number of training steps must be at least 1")
        if not float(self.learning_rate) > 0:
            raise VoxelMorphRegError("the learning rate must be positive")
        if self.similarity not in SIMILARITIES:
            raise VoxelMorphRegError(f"similarity must be one of {', '.join(SIMILARITIES)}")
        if float(self.smoothness_weight) < 0 or float(self.dice_weight) < 0:
            raise VoxelMorphRegError("loss weights must not be negative")
        if int(self.validate_every) < 1:
            raise VoxelMorphRegError("validate every: at least 1 step")
        if self.device not in DEVICES:
            raise VoxelMorphRegError(f"device must be one of {', '.join(DEVICES)}")


def _number(value) -> str:
    return repr(float(value))


def build_train_command(prefix, data, atlas, out, options: TrainOptions, validation=None) -> list[str]:
    """Engine command line: ``prefix train --data DATA --atlas ATLAS --out OUT [options]``."""
    command = [str(p) for p in prefix] + ["train", "--data", str(data)]
    if validation:
        command += ["--val", str(validation)]
    command += ["--atlas", str(atlas), "--out", str(out)]
    command += ["--steps", str(int(options.steps)), "--learning-rate", _number(options.learning_rate)]
    command += ["--similarity", str(options.similarity)]
    command += ["--smoothness-weight", _number(options.smoothness_weight), "--dice-weight", _number(options.dice_weight)]
    command += ["--validate-every", str(int(options.validate_every)), "--device", str(options.device or "auto")]
    if options.init:
        command += ["--init", str(options.init)]
    command += [str(a) for a in options.extra_arguments]
    return command


# -- the engine's progress lines ---------------------------------------------------------------------


@dataclass
class StepProgress:
    """What one ``step N/M ...`` line of the engine says."""

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


def parse_step_line(line: str) -> StepProgress | None:
    """:class:`StepProgress` for a ``step N/M loss=... s/step eta N min [val_dice=V (best B)]`` line, else ``None``."""
    match = STEP_LINE.match(line.strip())
    if not match:
        return None
    rest = match.group(3)
    progress = StepProgress(int(match.group(1)), int(match.group(2)))
    if (found := _LOSS.search(rest)) is not None:
        progress.loss = _float(found.group(1))
    if (found := _RATE.search(rest)) is not None:
        progress.seconds_per_step = _float(found.group(1))
    if (found := _ETA.search(rest)) is not None:
        progress.eta_minutes = _float(found.group(1))
    if (found := _VAL.search(rest)) is not None:
        progress.validation_dice = _float(found.group(1))
    if (found := _BEST.search(rest)) is not None:
        progress.best_dice = _float(found.group(1))
    return progress


# -- log.csv -------------------------------------------------------------------------------------------


@dataclass
class TrainingRow:
    """One row of the engine's ``log.csv``; ``validation_dice`` is NaN on steps without validation."""

    step: int
    loss: float
    validation_dice: float
    values: dict  # every column as a float (NaN where empty)


class TrainingLogReader:
    """Reads the rows appended to a ``log.csv`` since the last call; a partly written row waits for its end."""

    def __init__(self, path):
        self.path = Path(path)
        self.offset = 0
        self.columns: list[str] | None = None

    def read_new(self) -> list[TrainingRow]:
        try:
            size = self.path.stat().st_size
        except OSError:
            return []
        if size < self.offset:  # replaced by a new, shorter file: start again
            self.offset, self.columns = 0, None
        if size == self.offset:
            return []
        try:
            with self.path.open("rb") as stream:
                stream.seek(self.offset)
                data = stream.read(size - self.offset)
        except OSError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        rows = []
        for raw in data[: end + 1].decode("utf-8", "replace").splitlines():
            if not raw.strip():
                continue
            cells = next(csv.reader([raw]))
            if self.columns is None:
                self.columns = [c.strip() for c in cells]
                continue
            values = {name: _float(cells[i]) if i < len(cells) and cells[i].strip() else math.nan for i, name in enumerate(self.columns)}
            step = values.get("step", math.nan)
            if not math.isfinite(step):
                continue
            rows.append(TrainingRow(int(step), values.get("loss", math.nan), values.get("validation_dice", math.nan), values))
        return rows


# -- training data from the scene ------------------------------------------------------------------------


def _normalised(name: str) -> str:
    return " ".join((name or "").lower().split())


def _same_grid(a, b) -> bool:
    return volume_size(a) == volume_size(b) and np.allclose(ijk_to_ras(a), ijk_to_ras(b), atol=1e-4)


def pair_segmentations(volumes, segmentations=()) -> list[tuple]:
    """``[(volume, segmentation or None), ...]`` in the order of ``volumes``.

    A segmentation (or label map volume) belongs to the volume that is (1) its segmentation's
    reference geometry volume, else (2) the volume whose name starts its name followed by a
    separator or nothing (``T1`` for ``T1_seg``, ``T1-label``, ``T1 segmentation``; the longest
    such name wins), else (3) the only volume on the same grid (label maps). Raises
    :class:`VoxelMorphRegError` for a segmentation that fits no volume or a volume given two.
    """
    volumes = [v for v in volumes if v is not None]
    segmentations = [s for s in segmentations if s is not None]
    assigned: dict[int, object] = {}
    by_id = {id(v): v for v in volumes}
    for segmentation in segmentations:
        target = None
        if is_segmentation(segmentation):
            reference = segmentation.GetNodeReference("referenceImageGeometryRef")
            target = next((v for v in volumes if reference is not None and v is reference), None)
        if target is None:
            name = _normalised(segmentation.GetName())
            candidates = []
            for volume in volumes:
                stem = _normalised(volume.GetName())
                rest = name[len(stem):]
                if stem and name.startswith(stem) and (rest == "" or rest[0] in " _-.") and volume is not segmentation:
                    candidates.append((len(stem), volume))
            if candidates:
                target = max(candidates, key=lambda c: c[0])[1]
        if target is None and is_label_map(segmentation) and segmentation.GetImageData() is not None:
            same = [v for v in volumes if v.GetImageData() is not None and _same_grid(v, segmentation)]
            if len(same) == 1:
                target = same[0]
        if target is None:
            raise VoxelMorphRegError(
                f"{segmentation.GetName()}: cannot tell which training volume it belongs to; "
                "name it after its volume (e.g. VOLUME_seg) or make that volume its reference geometry"
            )
        if id(target) in assigned:
            raise VoxelMorphRegError(f"{target.GetName()}: has two segmentations ({assigned[id(target)].GetName()}, {segmentation.GetName()}); pick one")
        assigned[id(target)] = segmentation
    return [(by_id[id(v)], assigned.get(id(v))) for v in volumes]


def split_validation(pairs: list[tuple], count: int) -> tuple[list[tuple], list[tuple]]:
    """``(training, validation)``: the last ``count`` subjects that have labels are held out for validation."""
    count = int(count or 0)
    if count <= 0:
        return list(pairs), []
    if count == 1:
        raise VoxelMorphRegError("validation needs at least 2 labelled subjects (Dice is measured between pairs)")
    labelled = [i for i, (_, labels) in enumerate(pairs) if labels is not None]
    if len(labelled) < count:
        raise VoxelMorphRegError(f"{count} validation subjects asked for, but only {len(labelled)} training volumes have a segmentation")
    held = set(labelled[-count:])
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]


def label_legend(label_nodes) -> tuple[list[LabelInfo], dict[str, dict[str, int]]]:
    """One label value per structure across all subjects.

    Label map volumes keep their values (e.g. FreeSurfer asegs); segments get the value of the
    label of the same name (case and spacing ignored), or a value nothing else uses. Returns the
    legend and, per segmentation node ID, ``{segment ID: value}`` for
    :func:`.segmentations.labels_to_array`.
    """
    legend: list[LabelInfo] = []
    used: set[int] = set()
    for node in label_nodes:
        if is_label_map(node):
            values = [int(v) for v in np.unique(voxel_array(node)) if v != 0]
            for info in label_map_infos(node, values):
                if info.value not in used:
                    legend.append(info)
                    used.add(info.value)
    segment_values: dict[str, dict[str, int]] = {}
    for node in label_nodes:
        if is_segmentation(node):
            infos = segment_infos(node)
            mapping = match_fixed_labels(legend, infos, keep_values=False)
            segment_values[node.GetID() or str(id(node))] = {info.segment_id: mapping[info.value] for info in infos}
            for info in infos:
                value = mapping[info.value]
                if value not in used:
                    legend.append(LabelInfo(value, info.name, info.color))
                    used.add(value)
    return legend, segment_values


def _safe_name(name: str, taken: set) -> str:
    base = re.sub(r"[^A-Za-z0-9.-]+", "_", name or "volume").strip("._") or "volume"
    candidate, number = base, 2
    while candidate.lower() in taken:
        candidate, number = f"{base}_{number}", number + 1
    taken.add(candidate.lower())
    return candidate


def _digest(image: sitk.Image) -> str:
    """Short hash of voxels and geometry: a changed volume gets a new file name (and a new cache entry)."""
    digest = hashlib.sha1()
    array = sitk.GetArrayViewFromImage(image)
    digest.update(str((array.dtype.str, array.shape, image.GetOrigin(), image.GetSpacing(), image.GetDirection())).encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:10]


def _write_image(image: sitk.Image, folder: Path, stem: str) -> Path:
    path = folder / f"{stem}-{_digest(image)}.nii.gz"
    if not path.exists():
        partial = path.with_name(path.name.replace(".nii.gz", ".partial.nii.gz"))
        sitk.WriteImage(image, str(partial), True)
        os.replace(partial, path)
    return path


def _write_csv(path: Path, rows: list[tuple]) -> None:
    partial = path.with_suffix(".partial.csv")
    with partial.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["name", "image", "labels"])
        writer.writerows(rows)
    os.replace(partial, path)


@dataclass
class TrainingData:
    """What :func:`write_training_data` wrote."""

    folder: Path
    train_csv: Path
    validation_csv: Path | None
    atlas: Path
    legend: list[LabelInfo]


def write_training_data(folder, train_pairs, validation_pairs=(), atlas_volume=None) -> TrainingData:
    """Write scene subjects as NIfTI (labels on their volume's grid) and the CSVs the engine reads.

    ``*_pairs``: ``(volume, segmentation or label map or None)``. Files are named after the
    node and a hash of the content, so an unchanged volume is not written twice and a changed
    one never meets a stale cache entry. ``atlas_volume`` defaults to the first training volume.
    The CSVs name files relative to themselves; ``labels.json`` gives each label value's name.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VoxelMorphRegError(f"{folder}: cannot create the training data folder ({exc})") from None
    all_pairs = list(train_pairs) + list(validation_pairs)
    for volume, _ in all_pairs:
        _check_volume(volume, "training")
    legend, segment_values = label_legend([labels for _, labels in all_pairs if labels is not None])
    taken: set = set()

    def rows_for(pairs):
        rows = []
        for volume, labels in pairs:
            name = _safe_name(volume.GetName(), taken)
            image_path = _write_image(volume_to_sitk(volume), folder, name)
            labels_path = None
            if labels is not None:
                values = segment_values.get(labels.GetID() or str(id(labels))) if is_segmentation(labels) else None
                array, _ = labels_to_array(labels, volume, values)
                labels_path = _write_image(labels_image(array, ijk_to_ras(volume), labels.GetName()), folder, f"{name}_labels")
            rows.append((name, image_path.name, labels_path.name if labels_path else ""))
        return rows

    train_rows = rows_for(train_pairs)
    validation_rows = rows_for(validation_pairs)
    if atlas_volume is not None:
        _check_volume(atlas_volume, "atlas")
        atlas = _write_image(volume_to_sitk(atlas_volume), folder, "atlas")
    elif train_rows:
        atlas = folder / train_rows[0][1]
    else:
        raise VoxelMorphRegError("no training volume")
    train_csv = folder / "train.csv"
    _write_csv(train_csv, train_rows)
    validation_csv = None
    if validation_rows:
        validation_csv = folder / "val.csv"
        _write_csv(validation_csv, validation_rows)
    (folder / "labels.json").write_text(json.dumps({str(i.value): i.name for i in sorted(legend, key=lambda i: i.value)}, indent=1), encoding="utf-8")
    return TrainingData(folder, train_csv, validation_csv, atlas, legend)


def first_image(path) -> Path | None:
    """The first subject's image of a training folder or CSV, in the engine's order (``None`` if labels only)."""
    try:
        sources = sources_from(path)
    except VoxelMorphRegError:
        return None
    return next((Path(source.image) for source in sources if source.image), None)


# -- the runner --------------------------------------------------------------------------------------------


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
        self._subjects_total = 0
        self._subjects_prepared = 0

    # -- state ---------------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self.state == RUNNING and self._stop_requested_at is not None

    @property
    def best_path(self) -> Path | None:
        return self.out / "best.pt" if self.out else None

    @property
    def last_path(self) -> Path | None:
        return self.out / "last.pt" if self.out else None

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
            self.options.check()
            if self.out is None:
                raise VoxelMorphRegError("no output folder for the model")
            try:
                self.out.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise VoxelMorphRegError(f"{self.out}: cannot create the output folder ({exc})") from None
            data, validation, atlas = self._prepare()
            self.command = build_train_command(self.engine_prefix, data, atlas, self.out, self.options, validation)
            self._reader = TrainingLogReader(self.out / "log.csv")
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

    def _handle_line(self, line: str) -> None:
        if not line.strip():
            return
        self._add_log(line)
        text = line.strip()
        progress = parse_step_line(text)
        if progress is not None:
            self.step, self.total_steps, self.last_progress = progress.step, progress.total, progress
            if not self.stopping:
                self._set_progress(progress.percent, progress.describe())
            return
        message = parse_error(text)
        if message is not None:
            self._engine_error = message
            return
        if (match := _SUBJECTS.match(text)) is not None:
            self._subjects_total = int(match.group(1)) + int(match.group(2))
            self._set_progress(0, f"preparing {self._subjects_total} subjects (affine alignment to the atlas)")
        elif _PREPARED.match(text):
            self._subjects_prepared += 1
            total = f"/{self._subjects_total}" if self._subjects_total else ""
            self._set_progress(0, f"prepared {self._subjects_prepared}{total} subjects")
        elif (match := _RESUMING.match(text) or _INTERRUPTED.match(text)) is not None:
            self.step = int(match.group(1))

    def _read_rows(self) -> None:
        if self._reader is None:
            return
        rows = self._reader.read_new()
        if rows:
            self.rows.extend(rows)
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
            if self._stop_requested_at is not None or (returncode == 130 and not self._engine_error):
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
            if self.finished_callback:
                self.finished_callback(self)

    def attach_plot(self, plot) -> None:
        """Send the rows to ``plot`` from now on, starting with every row read so far (e.g. a new plot after a scene close)."""
        self.plot = plot
        if plot is not None and self.rows:
            plot.add_rows(self.rows)

    # -- stop and wait -------------------------------------------------------------------------

    def stop(self, wait: bool = False, timeout: float | None = None) -> None:
        """Ask the engine to stop (SIGINT: it saves ``last.pt``); kill the tree after ``timeout`` s.

        ``timeout`` defaults to ``stop_timeout_s``. With ``wait=False`` this returns at once and
        :meth:`poll` finishes the job (and kills when the time is up).
        """
        if self.state != RUNNING:
            return
        if timeout is not None:
            self.stop_timeout_s = float(timeout)
        if self._stop_requested_at is None:
            self._stop_requested_at = time.monotonic()
            self._set_progress(self.progress, "stopping: the engine saves last.pt")
            if not self.process.interrupt():
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
