"""The registration runner: scene inputs -> engine process -> new nodes (Qt-free).

Sequence:

1. :meth:`RegistrationRunner.start` writes the inputs into a new temporary folder (volumes as
   NRRD with their world geometry; segmentations as label maps on their volume's grid), then
   starts ``python -m VoxelMorphRegLib.frontends.cli register ...`` in its own process group
   (:class:`.engine_process.EngineProcess`).
2. :meth:`RegistrationRunner.poll` (called by a timer in the GUI) or :meth:`RegistrationRunner.wait`
   (blocking, console use) reads the engine's output lines, follows the ``[ NN%] stage`` progress
   lines and, once the process has ended, imports the outputs -- only on success, all at once
   (see :mod:`.outputs`) -- and removes the temporary folder.
3. :meth:`RegistrationRunner.cancel` kills the whole process tree at once (process group on
   POSIX, ``taskkill /T`` on Windows), imports nothing and removes the temporary folder.

A failed or cancelled run therefore leaves the scene exactly as it was.

:class:`EngineJob` is what this runner and the training runner (:mod:`.training_runner`) share:
state, progress, log and their callbacks.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from ..errors import CancelledError, VoxelMorphRegError
from . import environment
from .engine_process import EngineProcess
from .outputs import ImportPlan, OutputTargets, RegistrationResult, commit_outputs, stage_outputs
from .segmentations import is_label_map, labels_image, labels_to_array, match_fixed_labels, remap
from .volumes import ijk_to_ras, volume_size, volume_to_sitk

PROGRESS_LINE = re.compile(r"^\[\s*(\d+)%\]\s*(.*)$")
ERROR_PREFIX = "voxelmorphreg: error:"

IDLE, RUNNING, SUCCEEDED, FAILED, CANCELLED = "idle", "running", "succeeded", "failed", "cancelled"


@dataclass
class RegistrationOptions:
    """Engine settings (see ``voxelmorphreg register --help``) and which optional outputs to import."""

    model: str | None = None  # model file, "bundled" (None means bundled) or "none"
    device: str = "auto"  # auto, cpu or cuda
    affine: bool = True
    refine_iterations: int | None = None  # None or < 0: the model's own default
    refine_smoothness: float | None = None  # None: the model's own default
    integration_steps: int | None = None  # None or 0: the model's own
    qc: bool = False
    inverse_transform: bool = False
    jacobian: bool = True
    table: bool = True


def parse_progress(line: str):
    """``(percent, stage)`` for a progress line, else ``None``."""
    match = PROGRESS_LINE.match(line.strip())
    if not match:
        return None
    return min(100, int(match.group(1))), match.group(2).strip()


def parse_error(line: str) -> str | None:
    """The message of an engine error line, else ``None``."""
    line = line.strip()
    return line[len(ERROR_PREFIX):].strip() if line.startswith(ERROR_PREFIX) else None


def build_command(prefix, fixed, moving, out, options: RegistrationOptions, moving_labels=None, fixed_labels=None) -> list[str]:
    """Engine command line: ``prefix register FIXED MOVING --out DIR [options]``."""
    command = [str(p) for p in prefix] + ["register", str(fixed), str(moving), "--out", str(out)]
    if moving_labels:
        command += ["--moving-labels", str(moving_labels)]
    if fixed_labels:
        command += ["--fixed-labels", str(fixed_labels)]
    command += ["--model", str(options.model or "bundled"), "--device", str(options.device or "auto")]
    if not options.affine:
        command.append("--no-affine")
    if options.refine_iterations is not None and int(options.refine_iterations) >= 0:
        command += ["--refine", str(int(options.refine_iterations))]
    if options.refine_smoothness is not None:
        command += ["--refine-smoothness", repr(float(options.refine_smoothness))]
    if options.integration_steps:
        command += ["--integration-steps", str(int(options.integration_steps))]
    if not options.qc:
        command.append("--no-qc")
    return command


def default_engine_prefix(python: str | None = None) -> list[str]:
    return [python or environment.engine_python(), "-m", "VoxelMorphRegLib.frontends.cli"]


def default_temp_root() -> str | None:
    """Slicer's temporary folder inside the application, the system's otherwise."""
    if environment.in_slicer_application():
        import slicer

        path = slicer.app.temporaryPath
        if path:
            return path
    return None


def _check_volume(node, role: str) -> None:
    if node is None:
        raise VoxelMorphRegError(f"no {role} volume selected")
    if not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise VoxelMorphRegError(f"{node.GetName()}: the {role} volume must be a scalar volume")
    if node.GetImageData() is None:
        raise VoxelMorphRegError(f"{node.GetName()}: the {role} volume has no voxels")


def _remove_folder(path) -> None:
    if path is None:
        return
    for attempt in range(20):  # Windows may hold files of a just-killed process for a moment
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            return
        time.sleep(0.05 * (attempt + 1))


class EngineJob:
    """What a runner of an engine job keeps: state, progress, log, and the callbacks told of them.

    Subclasses name their engine (:attr:`engine_name`, for messages), the states a run ends in
    (:attr:`final_states`), and give ``start()``, ``poll()`` and :meth:`_abort` (what a timeout or
    Ctrl-C in :meth:`_wait_until_finished` does; :attr:`abort_word` says it).
    """

    engine_name = "engine"
    final_states: tuple = (SUCCEEDED, FAILED)
    abort_word = "cancelled"

    def __init__(self, progress_callback=None, log_callback=None, finished_callback=None):
        self.progress_callback = progress_callback
        self.log_callback = log_callback
        self.finished_callback = finished_callback
        self.state = IDLE
        self.progress = 0
        self.stage = ""
        self.log: list[str] = []
        self.error = ""
        self.command: list[str] = []
        self._engine_error = ""

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    @property
    def finished(self) -> bool:
        return self.state in self.final_states

    def _set_progress(self, percent: int, stage: str) -> None:
        self.progress, self.stage = percent, stage
        if self.progress_callback:
            self.progress_callback(percent, stage)

    def _add_log(self, line: str) -> None:
        self.log.append(line)
        if self.log_callback:
            self.log_callback(line)

    def _fallback_error(self, returncode: int) -> str:
        """The error of a run whose engine failed without an error line: exit code and last output line."""
        last = next((line.strip() for line in reversed(self.log) if line.strip() and not line.startswith("$ ")), "")
        detail = f": {last}" if last else ""
        return f"the {self.engine_name} engine stopped with exit code {returncode}{detail}"

    def _abort(self) -> None:
        raise NotImplementedError

    def _wait_until_finished(self, timeout: float | None, interval: float) -> None:
        """Start if not started; poll until the run is over. On timeout or Ctrl-C, :meth:`_abort` (then raise)."""
        if self.state == IDLE:
            self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not self.poll():
                if deadline is not None and time.monotonic() > deadline:
                    self._abort()
                    raise VoxelMorphRegError(f"{self.engine_name} did not finish within {timeout:g} s; {self.abort_word}")
                time.sleep(interval)
        except KeyboardInterrupt:
            self._abort()
            raise


class RegistrationRunner(EngineJob):
    """One registration: start, poll or wait, cancel. See the module docstring."""

    engine_name = "registration"
    final_states = (SUCCEEDED, FAILED, CANCELLED)

    def __init__(
        self,
        scene,
        fixed_volume,
        moving_volume,
        moving_segmentation=None,
        fixed_segmentation=None,
        options: RegistrationOptions | None = None,
        targets: OutputTargets | None = None,
        engine_prefix=None,
        temp_root=None,
        progress_callback=None,
        log_callback=None,
        finished_callback=None,
    ):
        super().__init__(progress_callback, log_callback, finished_callback)
        self.scene = scene
        self.fixed_volume = fixed_volume
        self.moving_volume = moving_volume
        self.moving_segmentation = moving_segmentation
        self.fixed_segmentation = fixed_segmentation
        self.options = options or RegistrationOptions()
        self.targets = targets or OutputTargets()
        self.engine_prefix = list(engine_prefix) if engine_prefix else default_engine_prefix()
        self.temp_root = temp_root if temp_root is not None else default_temp_root()

        self.result: RegistrationResult | None = None
        self.temp_folder: Path | None = None
        self.engine: EngineProcess | None = None
        self._plan: ImportPlan | None = None

    @property
    def process(self) -> subprocess.Popen | None:
        """The engine's process (``None`` before :meth:`start`)."""
        return self.engine.process if self.engine is not None else None

    # -- inputs --------------------------------------------------------------------------------

    def _write_inputs(self, folder: Path) -> tuple[dict, ImportPlan]:
        fixed, moving = self.fixed_volume, self.moving_volume
        fixed_matrix, moving_matrix = ijk_to_ras(fixed), ijk_to_ras(moving)
        paths = {"fixed": folder / "fixed.nrrd", "moving": folder / "moving.nrrd", "out": folder / "out"}
        sitk.WriteImage(volume_to_sitk(fixed), str(paths["fixed"]), False)
        sitk.WriteImage(volume_to_sitk(moving), str(paths["moving"]), False)
        plan = ImportPlan(
            fixed_node=fixed,
            moving_node=moving,
            fixed_ijk_to_ras=fixed_matrix,
            fixed_size=volume_size(fixed),
            moving_ijk_to_ras=moving_matrix,
            moving_size=volume_size(moving),
            moving_segmentation_node=self.moving_segmentation,
            inverse_transform=self.options.inverse_transform,
            jacobian=self.options.jacobian,
            table=self.options.table,
        )
        moving_infos = []
        if self.moving_segmentation is not None:
            array, moving_infos = labels_to_array(self.moving_segmentation, moving)
            paths["moving_labels"] = folder / "moving_labels.nrrd"
            sitk.WriteImage(labels_image(array, moving_matrix, "moving labels"), str(paths["moving_labels"]), True)
            plan.label_infos = moving_infos
            plan.label_names = {info.value: info.name for info in moving_infos}
        if self.fixed_segmentation is not None:
            array, fixed_infos = labels_to_array(self.fixed_segmentation, fixed)
            keep = is_label_map(self.fixed_segmentation) and (self.moving_segmentation is None or is_label_map(self.moving_segmentation))
            mapping = match_fixed_labels(moving_infos, fixed_infos, keep_values=keep)
            array = remap(array, mapping)
            for info in fixed_infos:
                plan.label_names.setdefault(mapping[info.value], info.name)
            paths["fixed_labels"] = folder / "fixed_labels.nrrd"
            sitk.WriteImage(labels_image(array, fixed_matrix, "fixed labels"), str(paths["fixed_labels"]), True)
        return paths, plan

    # -- process -------------------------------------------------------------------------------

    def start(self) -> "RegistrationRunner":
        """Write the inputs and start the engine; returns at once. Raises on invalid inputs."""
        if self.state != IDLE:
            raise VoxelMorphRegError("this runner has already been started; make a new one")
        _check_volume(self.fixed_volume, "fixed")
        _check_volume(self.moving_volume, "moving")
        self._set_progress(0, "writing inputs")
        folder = Path(tempfile.mkdtemp(prefix="VoxelMorphReg-", dir=self.temp_root))
        self.temp_folder = folder
        try:
            paths, self._plan = self._write_inputs(folder)
            self.command = build_command(
                self.engine_prefix, paths["fixed"], paths["moving"], paths["out"], self.options, paths.get("moving_labels"), paths.get("fixed_labels")
            )
            self._add_log("$ " + subprocess.list2cmdline(self.command))
            self.engine = EngineProcess(self.command, cwd=folder, env=environment.engine_environment()).start()
        except BaseException as exc:
            _remove_folder(folder)
            self.temp_folder = None
            self.state = FAILED
            self.error = str(exc)
            if isinstance(exc, VoxelMorphRegError):
                raise
            if isinstance(exc, OSError):
                raise VoxelMorphRegError(f"cannot start the registration engine ({exc})") from exc
            raise
        self.state = RUNNING
        return self

    def _drain(self) -> None:
        for line in self.engine.read_lines():
            if not line.strip():
                continue
            self._add_log(line)
            progress = parse_progress(line)
            if progress is not None:
                self._set_progress(*progress)
                continue
            message = parse_error(line)
            if message is not None:
                self._engine_error = message

    def poll(self) -> bool:
        """Handle new output; finish the run if the engine has ended. Returns whether the run is over."""
        if self.state != RUNNING:
            return self.finished
        self._drain()
        returncode = self.engine.poll()  # None until the engine has ended and its output is read
        if returncode is None:
            return False
        self._drain()
        self._finish(returncode)
        return True

    def _finish(self, returncode: int) -> None:
        try:
            if returncode == 0:
                self._set_progress(100, "importing results")
                try:
                    staged = stage_outputs(self.temp_folder / "out", self._plan)
                    self.result = commit_outputs(self.scene, staged, self.targets, self._plan, self.log)
                    self.state = SUCCEEDED
                    self._set_progress(100, "done")
                except VoxelMorphRegError as exc:
                    self.state, self.error = FAILED, str(exc)
                except Exception as exc:  # unexpected: report, but never leave the run "running"
                    self.state, self.error = FAILED, f"importing the results failed: {type(exc).__name__}: {exc}"
            else:
                self.state = CANCELLED if returncode == CancelledError.exit_code and not self._engine_error else FAILED
                self.error = self._engine_error or self._fallback_error(returncode)
        finally:
            _remove_folder(self.temp_folder)
            self.temp_folder = None
            if self.finished_callback:
                self.finished_callback(self)

    def _fallback_error(self, returncode: int) -> str:
        if returncode == CancelledError.exit_code:
            return "registration interrupted"
        return super()._fallback_error(returncode)

    def cancel(self) -> None:
        """Kill the engine and everything it started; import nothing; remove the temporary folder."""
        if self.state != RUNNING:
            return
        self.engine.kill()
        self.engine.wait(timeout=30)
        self._drain()
        self.state = CANCELLED
        self.error = "cancelled"
        _remove_folder(self.temp_folder)
        self.temp_folder = None
        if self.finished_callback:
            self.finished_callback(self)

    def _abort(self) -> None:
        self.cancel()

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> RegistrationResult:
        """Block until the run ends; return the result or raise (``CancelledError`` when cancelled)."""
        self._wait_until_finished(timeout, interval)
        if self.state == SUCCEEDED:
            return self.result
        if self.state == CANCELLED:
            raise CancelledError(self.error or "cancelled")
        raise VoxelMorphRegError(self.error or "registration failed")


def register(scene, fixed_volume, moving_volume, moving_segmentation=None, fixed_segmentation=None, options=None, targets=None, **runner_options) -> RegistrationResult:
    """Blocking registration (console use): start, wait, return the result or raise."""
    runner = RegistrationRunner(scene, fixed_volume, moving_volume, moving_segmentation, fixed_segmentation, options, targets, **runner_options)
    return runner.wait()
