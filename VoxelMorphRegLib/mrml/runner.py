"""The registration runner: scene inputs -> engine process -> new nodes (Qt-free).

Sequence:

1. :meth:`RegistrationRunner.start` writes the inputs into a new temporary folder (volumes as
   NRRD with their world geometry; segmentations as label maps on their volume's grid), then
   starts ``python -m VoxelMorphRegLib.frontends.cli register ... --events - --stop-on-stdin``
   in its own process group (:class:`.engine_process.EngineProcess`). The command line is the
   contract's (:func:`VoxelMorphRegLib.contract.command_line` of a
   :class:`~VoxelMorphRegLib.contract.RegisterJob`): the bridge keeps no copy of the engine's options.
2. :meth:`RegistrationRunner.poll` (called by a timer in the GUI) or :meth:`RegistrationRunner.wait`
   (blocking, console use) reads the engine's events (``stage`` and ``progress`` drive the
   progress bar; ``error`` is the message of a failed run) and, once the process has ended, imports
   the outputs -- only on success, all at once (see :mod:`.outputs`) -- and removes the temporary folder.
3. :meth:`RegistrationRunner.cancel` kills the whole process tree at once (process group on
   POSIX, ``taskkill /T`` on Windows), imports nothing and removes the temporary folder.

A failed or cancelled run therefore leaves the scene exactly as it was. A callback that raises
(e.g. while showing the result) is logged and kept in ``callback_error``; the run still ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import SimpleITK as sitk

from ..contract import Interrupted, Progress, RegisterJob, RegisterOptions, Stage, command_line
from ..errors import CancelledError, VoxelMorphRegError
from . import environment
from .engine_job import CANCELLED, FAILED, IDLE, RUNNING, SUCCEEDED, EngineJob
from .engine_process import EngineProcess
from .outputs import ImportPlan, OutputTargets, RegistrationResult, commit_outputs, stage_outputs
from .segmentations import is_label_map, labels_image, labels_to_array, match_fixed_labels, remap
from .volumes import ijk_to_ras, volume_size, volume_to_sitk

FRONT_END_FLAGS = ["--events", "-", "--stop-on-stdin"]  # events on stdout; stop (and stop when we go away) on stdin


def default_register_options() -> RegisterOptions:
    """The engine's settings as the module uses them by default: the contract's, without the QC figure."""
    return RegisterOptions(qc=False)


def handoff_options(options: RegisterOptions, inverse_transform: bool, jacobian: bool) -> RegisterOptions:
    """What the engine writes for the module to read back: uncompressed files (no gzip on either
    side), only the outputs the module imports (the inverse field and the Jacobian when asked
    for), no QC figure (the module does not show it)."""
    return replace(options, compress=False, inverse=bool(inverse_transform), jacobian=bool(jacobian), qc=False)


def build_command(prefix, job: RegisterJob) -> list[str]:
    """Engine command line: ``prefix register FIXED MOVING --out DIR [the job's options] --events - --stop-on-stdin``."""
    return [str(p) for p in prefix] + command_line(job) + FRONT_END_FLAGS


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


def _optional(path) -> str | None:
    return None if path is None else str(path)


def _check_volume(node, role: str) -> None:
    if node is None:
        raise VoxelMorphRegError(f"no {role} volume selected")
    if not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise VoxelMorphRegError(f"{node.GetName()}: the {role} volume must be a scalar volume")
    if node.GetImageData() is None:
        raise VoxelMorphRegError(f"{node.GetName()}: the {role} volume has no voxels")


def _check_targets(targets: OutputTargets) -> None:
    """Existing output nodes must be able to hold what goes into them (a displacement grid needs a grid transform node, a mask a segmentation node)."""
    for key in ("transform", "inverse_transform"):
        node = getattr(targets, key)
        if node is not None and not node.IsA("vtkMRMLGridTransformNode"):
            raise VoxelMorphRegError(f"{node.GetName()}: a {node.GetClassName()} cannot hold the displacement grid; choose a grid transform node or let one be created")
    for key in ("segmentation", "brain_mask", "moving_brain_mask"):
        node = getattr(targets, key)
        if node is not None and not node.IsA("vtkMRMLSegmentationNode"):
            raise VoxelMorphRegError(f"{node.GetName()}: a {node.GetClassName()} cannot hold a segmentation; choose a segmentation node or let one be created")


def _remove_folder(path) -> None:
    if path is None:
        return
    for attempt in range(20):  # Windows may hold files of a just-killed process for a moment
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            return
        time.sleep(0.05 * (attempt + 1))


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
        options: RegisterOptions | None = None,
        targets: OutputTargets | None = None,
        inverse_transform: bool = False,
        jacobian: bool = True,
        table: bool = True,
        brain_mask: bool = True,
        moving_brain_mask: bool = False,
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
        self.options = options if options is not None else default_register_options()
        self.targets = targets or OutputTargets()
        # Which optional outputs to import (the engine writes them all; the brain masks only when it used them,
        # which options.brain_mask "off" rules out).
        self.inverse_transform, self.jacobian, self.table = bool(inverse_transform), bool(jacobian), bool(table)
        self.brain_mask, self.moving_brain_mask = bool(brain_mask), bool(moving_brain_mask)
        self.engine_prefix = list(engine_prefix) if engine_prefix else default_engine_prefix()
        self.temp_root = temp_root if temp_root is not None else default_temp_root()

        self.result: RegistrationResult | None = None
        self.temp_folder: Path | None = None
        self.engine: EngineProcess | None = None
        self._plan: ImportPlan | None = None
        self._interrupted = False

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
            inverse_transform=self.inverse_transform,
            jacobian=self.jacobian,
            table=self.table,
            brain_mask=self.brain_mask,
            moving_brain_mask=self.moving_brain_mask,
        )
        moving_infos = []
        if self.moving_segmentation is not None:
            array, moving_infos = labels_to_array(self.moving_segmentation, moving)
            paths["moving_labels"] = folder / "moving_labels.nrrd"
            sitk.WriteImage(labels_image(array, moving_matrix, "moving labels"), str(paths["moving_labels"]), False)
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
            sitk.WriteImage(labels_image(array, fixed_matrix, "fixed labels"), str(paths["fixed_labels"]), False)
        return paths, plan

    # -- process -------------------------------------------------------------------------------

    def start(self) -> "RegistrationRunner":
        """Write the inputs and start the engine; returns at once. Raises on invalid inputs."""
        if self.state != IDLE:
            raise VoxelMorphRegError("this runner has already been started; make a new one")
        _check_volume(self.fixed_volume, "fixed")
        _check_volume(self.moving_volume, "moving")
        _check_targets(self.targets)
        self._set_progress(0, "writing inputs")
        folder = Path(tempfile.mkdtemp(prefix="VoxelMorphReg-", dir=self.temp_root))
        self.temp_folder = folder
        try:
            paths, self._plan = self._write_inputs(folder)
            options = handoff_options(self.options, self.inverse_transform, self.jacobian)
            job = RegisterJob(str(paths["fixed"]), str(paths["moving"]), str(paths["out"]), _optional(paths.get("moving_labels")), _optional(paths.get("fixed_labels")), options)
            self.command = build_command(self.engine_prefix, job)
            self._add_log("$ " + subprocess.list2cmdline(self.command))
            self.engine = self.process = EngineProcess(self.command, cwd=folder, env=environment.engine_environment()).start()
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
            self._handle_line(line)

    def _on_event(self, event) -> None:
        if isinstance(event, Stage):
            self._set_progress(min(100, int(event.percent)), event.text)
        elif isinstance(event, Progress) and event.percent is not None:
            self._set_progress(min(100, int(event.percent)), event.text or self.stage)
        elif isinstance(event, Interrupted):
            self._interrupted = True

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
                cancelled = (self._interrupted or returncode == CancelledError.exit_code) and not self._engine_error
                self.state = CANCELLED if cancelled else FAILED
                self.error = self._engine_error or self._fallback_error(returncode)
        finally:
            _remove_folder(self.temp_folder)
            self.temp_folder = None
            self._notify_finished()

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
        self._notify_finished()

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
