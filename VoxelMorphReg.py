"""VoxelMorphReg: learned deformable registration of brain MRI in 3D Slicer.

The registration itself runs as a separate process (Slicer's own Python running
``python -m VoxelMorphRegLib.frontends.cli register ...``), so the application stays responsive
and a Cancel can kill it at once. Everything between the scene and that process lives in
``VoxelMorphRegLib.mrml`` (no Qt there), the two panels and the rest of the Qt code in
``VoxelMorphRegWidgets``; this file holds the module, its parameter node, the widget that holds
the panels together, the console-friendly logic and the test that runs inside Slicer.
"""

import logging
import os
from pathlib import Path
from typing import Annotated, Optional, Union

import qt
import vtk

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.util import VTKObservationMixin
from slicer import (
    vtkMRMLGridTransformNode,
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)

MODULE_FOLDER = Path(__file__).resolve().parent
# Which model "bundled" is, and what "none" means, is decided in one place (torch-free).
from VoxelMorphRegLib.model_resolution import BUNDLED as BUNDLED_MODEL  # noqa: E402
from VoxelMorphRegLib.model_resolution import NO_MODEL  # noqa: E402

# The Qt side of the panel (importable here as before: OPTIONAL_SETTINGS, connectParametersToWidgets, the panels).
from VoxelMorphRegWidgets.engine_panel import EnginePanel as _EnginePanel  # noqa: E402,F401
from VoxelMorphRegWidgets.engine_setup import EngineSetup  # noqa: E402
from VoxelMorphRegWidgets.parameter_gui import connectParametersToWidgets  # noqa: E402
from VoxelMorphRegWidgets.register_panel import OPTIONAL_SETTINGS, VoxelMorphRegRegisterPanel  # noqa: E402,F401
from VoxelMorphRegWidgets.train_panel import VoxelMorphRegTrainPanel  # noqa: E402
from VoxelMorphRegWidgets.translation import _, translate  # noqa: E402


#
# VoxelMorphReg
#


class VoxelMorphReg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("VoxelMorph Registration")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["VoxelMorphReg contributors"]
        self.parent.helpText = _(
            """
Deformable registration of brain MRI with a learned, diffeomorphic VoxelMorph model.
<p>Pick a <b>fixed</b> and a <b>moving</b> volume (optionally a segmentation of each) and click
<b>Register</b>. Results are new nodes: the moving volume <b>warped</b> onto the fixed grid, a
<b>grid transform</b> (fixed-to-moving displacement, TransformFromParent: put the moving volume or
its segmentation under it to overlay the fixed volume), the <b>warped segmentation</b>, the
<b>Jacobian determinant</b>, a <b>metrics table</b> (Dice before/after, folding, runtime) and, for a
whole-head scan, the fixed <b>brain mask</b> (outlined) the registration focused on.</p>
<p>The registration runs in a separate process; the button becomes <b>Cancel</b> while it runs.
A failed or cancelled run leaves the scene as it was.</p>
<p>Console: <code>slicer.util.getModuleLogic("VoxelMorphReg").register(fixedNode, movingNode)</code>.</p>
"""
        )
        self.parent.acknowledgementText = _(
            """
Built on VoxelMorph (Balakrishnan et al., IEEE TMI 2019; Dalca et al., MICCAI 2018 and MedIA 2019),
PyTorch, MONAI, SimpleITK and 3D Slicer.
"""
        )


#
# Parameter node
#


@parameterNodeWrapper
class VoxelMorphRegParameterNode:
    """What the panel shows, saved with the scene.

    model: "bundled", "none" or a checkpoint file path; userModels: checkpoint files the user added.
    refineIterations, refineSmoothness, refineLearningRate, integrationSteps: None means the
    model's own setting (the "model default" boxes). fade: foreground (warped) opacity.
    train*: the Train panel's settings (see VoxelMorphRegLogic.train).
    """

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    movingSegmentation: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, None] = None
    fixedSegmentation: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, None] = None
    model: str = BUNDLED_MODEL
    userModels: list[str]
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    affine: bool = True
    brainMask: bool = True
    refineIterations: Optional[int] = None
    integrationSteps: Optional[int] = None
    refineSmoothness: Optional[float] = None
    refineLearningRate: Optional[float] = None
    outputVolume: vtkMRMLScalarVolumeNode
    outputTransform: vtkMRMLGridTransformNode
    inverseTransform: bool = False
    outputInverseTransform: vtkMRMLGridTransformNode
    outputSegmentation: vtkMRMLSegmentationNode
    jacobian: bool = True
    outputJacobian: vtkMRMLScalarVolumeNode
    table: bool = True
    outputTable: vtkMRMLTableNode
    fade: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    # Train panel (training volumes and paths are read from the panel when training starts).
    trainAtlas: Union[vtkMRMLScalarVolumeNode, None] = None
    trainValidationCount: Annotated[int, WithinRange(0, 1000)] = 0
    trainSteps: Annotated[int, WithinRange(1, 1000000)] = 2000
    trainLearningRate: Annotated[float, WithinRange(0.000001, 0.1)] = 0.0003
    trainSimilarity: Annotated[str, Choice(["lncc", "mse"])] = "lncc"
    trainSmoothnessWeight: Annotated[float, WithinRange(0.0, 100.0)] = 1.0
    trainDiceWeight: Annotated[float, WithinRange(0.0, 100.0)] = 1.0
    trainValidateEvery: Annotated[int, WithinRange(1, 100000)] = 100
    trainDevice: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    trainFineTune: bool = False


#
# VoxelMorphRegWidget
#


class VoxelMorphRegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: the parameter node and the scene's volumes; the two panels and the engine setup (VoxelMorphRegWidgets) do the rest."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.engineSetup = None
        self.registerPanel = None
        self.trainPanel = None

    # The runners live in the panels; these are for the console and the tests.
    @property
    def _runner(self):
        return self.registerPanel.runner if self.registerPanel else None

    @property
    def _trainRunner(self):
        return self.trainPanel.runner if self.trainPanel else None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/VoxelMorphReg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = VoxelMorphRegLogic()
        self.registerPanel = VoxelMorphRegRegisterPanel(self)
        self.trainPanel = VoxelMorphRegTrainPanel(self)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)

        self.engineSetup = EngineSetup(self)  # PyTorch and MONAI on first use, the device label

        self.initializeParameterNode()
        self.trainPanel.updateGUI()
        self.startDeviceProbe()

    def cleanup(self) -> None:
        if self.registerPanel is not None:
            self.registerPanel.cleanup()
        if self.trainPanel is not None:
            self.trainPanel.cleanup()
        if self.engineSetup is not None:
            self.engineSetup.cleanup()
        self.setParameterNode(None)
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        # The node stays (a run that ends meanwhile still reads and writes it); only the GUI lets go.
        self._disconnectParameterNode()

    def onSceneStartClose(self, caller, event) -> None:
        if self.registerPanel is not None:
            self.registerPanel.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeAdded(self, caller, event, node) -> None:
        """A volume loaded into a scene where no fixed or moving volume is chosen yet becomes that one (fixed first)."""
        p = self._parameterNode
        if p is None or node is None or not isScalarVolume(node) or caller.IsImporting() or caller.IsClosing():
            return  # a scene being loaded brings its own choices
        if not p.fixedVolume:
            p.fixedVolume = node
        elif not p.movingVolume and node is not p.fixedVolume:
            p.movingVolume = node

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        p = self._parameterNode
        # Scenes saved by earlier versions of the module kept "model default" as -1 iterations,
        # a negative smoothness and 0 integration steps (the spin box now starts at 1).
        for name, isOldDefault in (("refineIterations", lambda v: v < 0), ("refineSmoothness", lambda v: v < 0), ("integrationSteps", lambda v: v <= 0)):
            value = getattr(p, name)
            if value is not None and isOldDefault(value):
                setattr(p, name, None)
        volumes = [v for v in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode") if isScalarVolume(v)]
        if not p.fixedVolume and volumes:
            p.fixedVolume = volumes[0]
        if not p.movingVolume:
            others = [v for v in volumes if v is not p.fixedVolume]
            if others:
                p.movingVolume = others[0]

    def _disconnectParameterNode(self) -> None:
        if not self._parameterNode:
            return
        if self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
        if self.hasObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode):
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def setParameterNode(self, inputParameterNode: Optional[VoxelMorphRegParameterNode]) -> None:
        self._disconnectParameterNode()
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = connectParametersToWidgets(self._parameterNode, self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
            self.registerPanel.updateModelList()
            self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        if not self._parameterNode:
            return
        self.registerPanel.updateGUI()
        self.trainPanel.updateGUI()

    # -- the engine's packages and devices (VoxelMorphRegWidgets.engine_setup) ---------------------

    @property
    def installing(self) -> bool:
        """Whether PyTorch and MONAI are being installed (Register and Train are disabled meanwhile)."""
        return self.engineSetup is not None and self.engineSetup.installing

    def ensureDependencies(self, purpose: str) -> bool:
        """Install PyTorch and MONAI if needed, with Register and Train disabled meanwhile; ``False`` if declined.

        Raises what the installation raises (``VoxelMorphRegError`` with what to do)."""
        return self.engineSetup.ensureDependencies(purpose)

    def startDeviceProbe(self) -> None:
        """Ask a separate Python process which devices torch sees (never imports torch here)."""
        self.engineSetup.startDeviceProbe()

    def onProbeTimer(self) -> None:
        self.engineSetup.onProbeTimer()

    # -- model list (the Register panel's; training adds to it) --------------------------------

    def addTrainedModel(self, path, select: bool = True) -> None:
        self.registerPanel.addModel(path, select)

    def reportStartFailure(self, template: str, statusLabel, exc: Exception) -> None:
        """Show why a run could not start: the engine's one-line message, or the details of anything unexpected."""
        from VoxelMorphRegLib.errors import VoxelMorphRegError

        statusLabel.text = _("Error: {message}").format(message=exc)
        if isinstance(exc, VoxelMorphRegError):
            slicer.util.errorDisplay(template.format(message=exc))
        else:
            logging.exception("VoxelMorphReg: a run could not start")
            slicer.util.errorDisplay(template.format(message=exc), detailedText=str(exc))


def isScalarVolume(node) -> bool:
    return node is not None and node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLLabelMapVolumeNode")


#
# VoxelMorphRegLogic
#


class VoxelMorphRegLogic(ScriptedLoadableModuleLogic):
    """Registration without the panel (see :meth:`register`)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return VoxelMorphRegParameterNode(super().getParameterNode())

    # -- models and dependencies -------------------------------------------------------------

    @staticmethod
    def bundledModels() -> list:
        """The bundled model files found, the one "bundled" means first (``VoxelMorphRegLib.model_resolution``)."""
        from VoxelMorphRegLib.model_resolution import bundled_models

        return bundled_models()

    def modelChoices(self, userModels=()) -> list:
        """``(label, value, tooltip)`` for the model combo box."""
        bundled = self.bundledModels()
        choices = [(_("Bundled model"), BUNDLED_MODEL, _("The model shipped with the extension") + (f" ({bundled[0].name})" if bundled else ""))]
        for path in bundled[1:]:
            choices.append((_("Bundled: {name}").format(name=path.stem), str(path), str(path)))
        for path in userModels:
            name = Path(path).name
            if name in ("best.pt", "last.pt"):  # trained here: the folder tells them apart
                name = f"{Path(path).parent.name}/{name}"
            choices.append((name, path, path))
        choices.append((_("None (optimise this pair only)"), NO_MODEL, _("No network: per-pair optimisation only (slower)")))
        return choices

    def modelFile(self, model) -> str:
        """The checkpoint file of a model choice ("bundled", a path); raises for "none" or a missing file."""
        from VoxelMorphRegLib.errors import VoxelMorphRegError
        from VoxelMorphRegLib.model_resolution import resolve_model_path

        path = resolve_model_path(model)
        if path is None:
            raise VoxelMorphRegError("fine-tuning needs a model: select the bundled model or a checkpoint in Settings")
        return str(path)

    @staticmethod
    def missingDependencies() -> list:
        from VoxelMorphRegLib.mrml.environment import missing_packages

        return missing_packages()

    @staticmethod
    def dependencyProblems() -> list:
        """What stops the engine from running (missing packages, versions that do not fit), one sentence each."""
        from VoxelMorphRegLib.mrml.environment import dependency_problems

        return dependency_problems()

    def checkDependencies(self) -> None:
        """Raise ``VoxelMorphRegError`` saying what to do if the engine's packages are missing or do not fit."""
        from VoxelMorphRegLib.errors import VoxelMorphRegError

        problems = self.dependencyProblems()
        if problems:
            raise VoxelMorphRegError("; ".join(problems))

    def installDependencies(self, askConfirmation: bool = True) -> bool:
        """Install PyTorch (through the PyTorch extension) and a MONAI that fits it, if needed; ``False`` if declined.

        MONAI is installed without its dependencies (``--no-deps``: pip must not replace torch,
        numpy or vtk under Slicer), so the version is picked to fit the torch, Python and numpy
        that are there (:func:`VoxelMorphRegLib.mrml.environment.monai_requirement`). Raises
        ``VoxelMorphRegError`` saying what to do when no fitting combination can be installed.
        """
        import importlib

        from VoxelMorphRegLib.errors import VoxelMorphRegError
        from VoxelMorphRegLib.mrml import environment

        if not self.dependencyProblems():
            return True
        missing = self.missingDependencies()
        monaiProblem = [p for p in self.dependencyProblems() if p.startswith("MONAI")]
        names = missing + (["monai (a version that fits torch)"] if monaiProblem and "monai" not in missing else [])
        if names and askConfirmation and not slicer.app.testingEnabled():
            if not slicer.util.confirmOkCancelDisplay(
                _("VoxelMorphReg needs these Python packages: {names}.\nDownload and install them now? This can take several minutes.").format(names=", ".join(names)),
                windowTitle=_("Install dependencies"),
            ):
                return False
        if "torch" in missing:
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                raise VoxelMorphRegError("PyTorch is needed: install the 'PyTorch' extension with the Extensions Manager, restart Slicer and try again") from None
            minimum = ".".join(str(v) for v in environment.MINIMUM_TORCH)
            with slicer.util.WaitCursor():
                torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=f">={minimum}")
            if torch is None:
                raise VoxelMorphRegError("PyTorch installation failed; see the Python console for details")
            importlib.invalidate_caches()
        torchVersion = environment.installed_version("torch")
        if torchVersion is None or environment.version_tuple(torchVersion) < environment.MINIMUM_TORCH:
            self.checkDependencies()  # says what to do about the torch that is there
        if "monai" in missing or any(p.startswith("MONAI") for p in self.dependencyProblems()):
            requirement = environment.monai_requirement(torchVersion)
            if requirement is None:
                raise VoxelMorphRegError(
                    f"no MONAI release fits torch {torchVersion} with numpy {environment.installed_version('numpy')}: "
                    "update PyTorch to 2.4.1 or later in the PyTorch Utils module (uninstall, restart Slicer, install) and try again"
                )
            with slicer.util.WaitCursor():
                slicer.util.pip_install([requirement, "--no-deps"])
            importlib.invalidate_caches()
        importlib.invalidate_caches()
        still = self.missingDependencies()
        if still:
            raise VoxelMorphRegError(f"{', '.join(still)} still missing after the installation; restart Slicer and try again (the Python console shows pip's output)")
        self.checkDependencies()
        return True

    # -- training --------------------------------------------------------------------------------

    @staticmethod
    def defaultTrainingFolder() -> Path:
        """A new folder name under ~/VoxelMorphReg/models (not created)."""
        import time

        return Path.home() / "VoxelMorphReg" / "models" / time.strftime("model-%Y%m%d-%H%M%S")

    def train(
        self,
        volumes=None,
        segmentations=None,
        validationCount=0,
        dataPath=None,
        validationPath=None,
        atlasNode=None,
        atlasPath=None,
        outputFolder=None,
        steps=2000,
        learningRate=3e-4,
        similarity="lncc",
        smoothnessWeight=1.0,
        diceWeight=1.0,
        validateEvery=100,
        device="auto",
        initModel=None,
        wait=True,
        showPlot=True,
        progressCallback=None,
        logCallback=None,
        finishedCallback=None,
    ):
        """Train a model (``voxelmorphreg train``) in a background process.

        Data: ``volumes`` (scene volume nodes, at least two) with optional ``segmentations``
        (segmentation or label map nodes, each paired with its volume) and ``validationCount``
        of the segmented volumes held out for validation; or ``dataPath`` (a folder or CSV) with
        an optional ``validationPath``. ``atlasNode`` or ``atlasPath`` defines the model grid
        (default: the first training volume). ``outputFolder`` gets best.pt, last.pt, log.csv
        (and the scene volumes as NIfTI in data/); one holding last.pt resumes that training.
        ``initModel``: a checkpoint to fine-tune. ``showPlot`` shows the loss and validation
        Dice live in a plot view.

        With ``wait=True`` this blocks (the application keeps repainting) and returns the
        checkpoint path: best.pt, or after a stop the checkpoint kept (None if none); errors
        raise ``VoxelMorphRegError``. With ``wait=False`` it returns the started
        ``TrainingRunner``: call ``poll()`` regularly, ``stop()`` to stop it.
        """
        from VoxelMorphRegLib.contract import TrainOptions
        from VoxelMorphRegLib.errors import VoxelMorphRegError
        from VoxelMorphRegLib.mrml import training_export, training_runner

        self.checkDependencies()
        options = TrainOptions(  # the engine's own options
            steps=int(steps),
            learning_rate=float(learningRate),
            similarity=similarity,
            smoothness_weight=float(smoothnessWeight),
            dice_weight=float(diceWeight),
            validate_every=int(validateEvery),
            device=device or "auto",
            init=str(initModel) if initModel else None,
        )
        outputFolder = Path(outputFolder) if outputFolder else self.defaultTrainingFolder()
        inputs = {}
        if volumes:
            pairs = training_export.pair_segmentations(list(volumes), list(segmentations or []))
            inputs["subjects"], inputs["validation_subjects"] = training_export.split_validation(pairs, validationCount)
        elif dataPath:
            inputs["data"], inputs["validation"] = dataPath, validationPath or None
        else:
            raise VoxelMorphRegError("no training data: give training volumes or a folder or CSV file")
        runner = training_runner.TrainingRunner(
            outputFolder,
            options,
            atlas=atlasPath or None,
            atlas_volume=atlasNode,
            progress_callback=progressCallback,
            log_callback=logCallback or (lambda line: logging.debug(line)),
            finished_callback=finishedCallback,
            **inputs,
        )
        # Everything that can fail is built before the engine starts (it runs in its own session);
        # anything failing after it started stops it again.
        plot = self.attachTrainingPlot(runner) if showPlot else None
        try:
            runner.start()
        except BaseException:
            if plot is not None:
                plot.remove()
            raise
        try:
            if plot is not None:
                self.showTrainingPlot(plot)
        except BaseException:
            runner.stop(wait=True, timeout=15)
            raise
        if not wait:
            return runner
        import time

        while not runner.poll():
            if getattr(slicer, "app", None) is not None:
                slicer.app.processEvents()
            time.sleep(0.05)
        return runner.wait()  # the checkpoint, or the engine's error raised as VoxelMorphRegError

    def attachTrainingPlot(self, runner):
        """A new live plot (table, series, chart nodes) of the runner's loss and validation Dice, shown in a plot view."""
        from VoxelMorphRegLib.mrml.training_plot import TrainingPlot

        name = f"VoxelMorphReg training ({runner.out.name})" if runner.out else "VoxelMorphReg training"
        plot = TrainingPlot(slicer.mrmlScene, name=name)
        runner.attach_plot(plot)
        if runner.running:  # a new plot for a running training (e.g. after a scene close)
            self.showTrainingPlot(plot)
        return plot

    @staticmethod
    def showTrainingPlot(plot) -> None:
        """Switch to a layout with a plot view (if the current one has none) and show the chart there."""
        plotsModule = getattr(getattr(slicer, "modules", None), "plots", None)
        if getattr(slicer, "app", None) is None or plotsModule is None:
            return
        plotsModule.logic().ShowChartInLayout(plot.chart)

    # -- registration ----------------------------------------------------------------------------

    def register(
        self,
        fixedNode,
        movingNode,
        movingSegmentation=None,
        fixedSegmentation=None,
        model=None,
        device="auto",
        affine=True,
        refineIterations=None,
        refineSmoothness=None,
        refineLearningRate=None,
        integrationSteps=None,
        outputVolume=None,
        outputTransform=None,
        inverseTransform=False,
        outputInverseTransform=None,
        outputSegmentation=None,
        jacobian=True,
        outputJacobian=None,
        table=True,
        outputTable=None,
        brainMask=True,
        outputBrainMask=None,
        movingBrainMask=False,
        outputMovingBrainMask=None,
        wait=True,
        showResult=True,
        progressCallback=None,
        logCallback=None,
        finishedCallback=None,
    ):
        """Register ``movingNode`` onto ``fixedNode``.

        ``model``: None or "bundled" (the bundled model), "none" (per-pair optimisation only) or a
        checkpoint file. ``device``: "auto", "cpu" or "cuda". ``refineIterations``,
        ``refineSmoothness``, ``refineLearningRate`` (the per-pair refinement) and
        ``integrationSteps``: ``None`` means the model's own setting. ``output*``: existing nodes to
        overwrite; ``None`` creates new nodes (only when the run succeeds). ``brainMask``: register
        whole-head scans brain to brain (``--brain-mask auto``; ``False``: ``off``); the fixed mask,
        when the engine used one, becomes an outlined segmentation "<fixed> brain mask" (the moving
        one too with ``movingBrainMask``).

        With ``wait=True`` (default) this blocks and returns a ``RegistrationResult`` whose
        attributes ``warped_volume``, ``transform``, ``inverse_transform``, ``segmentation``,
        ``jacobian``, ``table``, ``brain_mask`` and ``moving_brain_mask`` are the output nodes
        (None where none was made; ``result.nodes()`` gives those made as a dict);
        errors raise ``VoxelMorphRegError`` with the engine's one-line message. With
        ``wait=False`` it returns the started ``RegistrationRunner``; call its ``poll()``
        regularly (or ``wait()``), ``cancel()`` to stop it.
        """
        from VoxelMorphRegLib.contract import RegisterOptions
        from VoxelMorphRegLib.errors import VoxelMorphRegError
        from VoxelMorphRegLib.mrml.outputs import OutputTargets
        from VoxelMorphRegLib.mrml.runner import RegistrationRunner

        self.checkDependencies()
        options = RegisterOptions(  # the engine's own options; None: the model's default
            model=model or BUNDLED_MODEL,
            device=device or "auto",
            affine=bool(affine),
            refine_iterations=None if refineIterations is None else int(refineIterations),
            refine_smoothness=None if refineSmoothness is None else float(refineSmoothness),
            refine_learning_rate=None if refineLearningRate is None else float(refineLearningRate),
            integration_steps=None if integrationSteps is None else int(integrationSteps),
            qc=False,
            brain_mask="auto" if brainMask else "off",
        )
        targets = OutputTargets(
            warped_volume=outputVolume,
            transform=outputTransform,
            inverse_transform=outputInverseTransform,
            segmentation=outputSegmentation if movingSegmentation is not None else None,
            jacobian=outputJacobian,
            table=outputTable,
            brain_mask=outputBrainMask,
            moving_brain_mask=outputMovingBrainMask,
        )

        def onFinished(runner):
            if showResult and runner.state == "succeeded":
                try:
                    self.showResult(runner.result, fixedNode, movingSegmentation)
                except Exception:  # the nodes are in the scene: the result stands, the views are a nicety
                    logging.exception("VoxelMorphReg: the registration succeeded but its results could not be shown")
            if finishedCallback:
                finishedCallback(runner)

        runner = RegistrationRunner(
            slicer.mrmlScene,
            fixedNode,
            movingNode,
            movingSegmentation,
            fixedSegmentation,
            options,
            targets,
            inverse_transform=bool(inverseTransform or outputInverseTransform),
            jacobian=bool(jacobian or outputJacobian),
            table=bool(table or outputTable),
            moving_brain_mask=bool(movingBrainMask or outputMovingBrainMask),
            progress_callback=progressCallback,
            log_callback=logCallback or (lambda line: logging.debug(line)),
            finished_callback=onFinished,
        )
        runner.start()
        if not wait:
            return runner
        if getattr(slicer, "app", None) is not None:
            # Blocking for the caller, but the application keeps drawing (progress, views).
            import time

            while not runner.poll():
                slicer.app.processEvents()
                time.sleep(0.05)
        return runner.wait()  # the result, or the engine's error raised as VoxelMorphRegError

    def showResult(self, result, fixedNode, movingSegmentation=None, opacity=0.5) -> None:
        """Fixed volume behind, warped volume in front at ``opacity``, warped segmentation and fixed brain mask as outlines, views fitted."""
        from VoxelMorphRegLib.mrml import views

        app = getattr(slicer, "app", None)
        layoutManager = app.layoutManager() if app is not None and hasattr(app, "layoutManager") else None
        sliceLogics = layoutManager.mrmlSliceLogics() if layoutManager is not None else None
        hidden = [movingSegmentation] if movingSegmentation is not None and movingSegmentation.IsA("vtkMRMLSegmentationNode") else []
        hidden.append(result.moving_brain_mask)  # in moving space: not drawn over the fixed volume (None: nothing to hide)
        views.show_registration(slicer.mrmlScene, fixedNode, result.warped_volume, result.segmentation, opacity, sliceLogics, hidden, result.brain_mask)


#
# VoxelMorphRegTest
#


class VoxelMorphRegTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer, offline: synthetic volumes (no sample data download), and no install.

    The engine needs PyTorch and MONAI; in testing mode (the extensions build machines, which have
    no network) the test does not install them: without them each test is skipped, saying why.
    ``Testing/Slicer/run_in_slicer.py`` is the fuller check a maintainer runs on Slicer's sample data.
    """

    NEEDS_ENGINE = (
        "needs PyTorch and MONAI, which this Slicer does not have; in testing mode (e.g. on an offline build machine) "
        "the test does not download them. Install them (click Register once, or VoxelMorphRegLogic().installDependencies()) and run it again"
    )

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        import unittest

        for test in (self.test_RegisterThroughWidget, self.test_FailureLeavesSceneUnchanged, self.test_CancelLeavesSceneUnchanged, self.test_TrainThroughWidget):
            self.setUp()
            try:
                test()
            except unittest.SkipTest as skipped:  # "Reload and Test" calls runTest directly
                self.delayDisplay(f"{test.__name__} skipped: {skipped}")

    def _requireEngine(self):
        problems = VoxelMorphRegLogic.dependencyProblems()
        if problems:
            self.skipTest(self.NEEDS_ENGINE + " (" + "; ".join(problems) + ")")

    def _loadSamples(self):
        """Two synthetic head-like volumes, the moving one shifted and squeezed: no download needed."""
        import numpy as np

        self._requireEngine()
        k, j, i = np.meshgrid(*(np.linspace(-1, 1, 64),) * 3, indexing="ij")
        volumes = []
        for index, (shift, squeeze) in enumerate(((0.0, 1.0), (0.08, 0.92))):
            x = (i - shift) / (0.75 * squeeze)
            head = (x**2 + (j / 0.85) ** 2 + (k / 0.7) ** 2) < 1
            inner = ((x - 0.25) / 0.3) ** 2 + ((j + 0.1) / 0.35) ** 2 + (k / 0.4) ** 2 < 1
            image = (60.0 * head + 40.0 * inner + np.random.default_rng(index).normal(0.0, 1.0, head.shape)).astype(np.float32)
            node = slicer.util.addVolumeFromArray(image, name=("fixed", "moving")[index])
            node.SetSpacing(2.5, 2.5, 2.5)
            volumes.append(node)
        return volumes[0], volumes[1]

    def _movingSegmentation(self, moving):
        """A two-segment segmentation of the moving volume (bright tissue, background-adjacent band)."""
        import numpy as np

        from VoxelMorphRegLib.mrml.segmentations import LabelInfo, new_segmentation_from_labels
        from VoxelMorphRegLib.mrml.volumes import ijk_to_ras

        array = slicer.util.arrayFromVolume(moving)
        labels = np.zeros(array.shape, np.uint8)
        labels[array > np.percentile(array, 90)] = 1
        labels[(array > np.percentile(array, 60)) & (labels == 0)] = 2
        node = new_segmentation_from_labels(labels, ijk_to_ras(moving), [LabelInfo(1, "Bright", (1.0, 0.2, 0.2)), LabelInfo(2, "Mid", (0.2, 0.4, 1.0))], name="moving segmentation")
        slicer.mrmlScene.AddNode(node)
        node.CreateDefaultDisplayNodes()
        return node

    def _widget(self):
        slicer.util.selectModule("VoxelMorphReg")
        return slicer.modules.voxelmorphreg.widgetRepresentation().self()

    def _runToEnd(self, widget, timeout_s=1800):
        import time

        start = time.time()
        while widget._runner is not None and widget._runner.running:
            slicer.app.processEvents()
            time.sleep(0.05)
            self.assertLess(time.time() - start, timeout_s, "registration did not finish in time")
        return widget._runner

    def test_RegisterThroughWidget(self):
        fixed, moving = self._loadSamples()
        segmentation = self._movingSegmentation(moving)
        widget = self._widget()
        p = widget._parameterNode
        p.fixedVolume, p.movingVolume, p.movingSegmentation = fixed, moving, segmentation
        p.refineIterations = 0

        self.delayDisplay("Registering")
        widget.ui.registerButton.click()
        self.assertEqual(widget.ui.registerButton.text, "Cancel")
        runner = self._runToEnd(widget)
        self.assertEqual(runner.state, "succeeded", runner.error)
        result = runner.result

        warped = result.warped_volume
        self.assertEqual(warped.GetImageData().GetDimensions(), fixed.GetImageData().GetDimensions())
        a, b = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        warped.GetIJKToRASMatrix(a)
        fixed.GetIJKToRASMatrix(b)
        for r in range(4):
            for c in range(4):
                self.assertAlmostEqual(a.GetElement(r, c), b.GetElement(r, c), places=6)
        self.assertTrue(result.transform.IsA("vtkMRMLGridTransformNode"))
        self.assertTrue(result.transform.GetTransformFromParent().IsA("vtkOrientedGridTransform"))
        self.assertEqual(result.segmentation.GetSegmentation().GetNumberOfSegments(), 2)
        self.assertEqual(result.segmentation.GetSegmentation().GetNthSegment(0).GetName(), "Bright")
        self.assertIsNotNone(result.table)
        self.assertIsNotNone(result.jacobian)

        composite = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceCompositeNode()
        self.assertEqual(composite.GetBackgroundVolumeID(), fixed.GetID())
        self.assertEqual(composite.GetForegroundVolumeID(), warped.GetID())
        self.assertAlmostEqual(composite.GetForegroundOpacity(), 0.5)
        self.assertFalse(result.segmentation.GetDisplayNode().GetVisibility2DFill())
        self.assertTrue(result.segmentation.GetDisplayNode().GetVisibility2DOutline())
        widget.ui.fadeSlider.value = 0.8
        self.assertAlmostEqual(composite.GetForegroundOpacity(), 0.8)
        self.delayDisplay("Test passed")

    def test_FailureLeavesSceneUnchanged(self):
        fixed, moving = self._loadSamples()
        widget = self._widget()
        p = widget._parameterNode
        p.fixedVolume, p.movingVolume = fixed, moving
        p.model = str(Path(slicer.app.temporaryPath) / "no-such-model.pt")
        count = slicer.mrmlScene.GetNumberOfNodes()
        widget.ui.registerButton.click()
        runner = self._runToEnd(widget)
        p.model = BUNDLED_MODEL
        self.assertEqual(runner.state, "failed")
        self.assertTrue(runner.error)
        self.assertNotIn("Traceback", runner.error)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)

    def test_CancelLeavesSceneUnchanged(self):
        import time

        fixed, moving = self._loadSamples()
        widget = self._widget()
        p = widget._parameterNode
        p.fixedVolume, p.movingVolume = fixed, moving
        count = slicer.mrmlScene.GetNumberOfNodes()
        widget.ui.registerButton.click()
        runner = widget._runner
        folder = runner.temp_folder
        time.sleep(1.0)
        slicer.app.processEvents()
        widget.ui.registerButton.click()  # Cancel
        self.assertEqual(runner.state, "cancelled")
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.assertFalse(folder is not None and os.path.exists(folder))
        self.assertEqual(widget.ui.registerButton.text, "Register")

    def test_TrainThroughWidget(self):
        """A few training steps on four tiny labelled volumes (two for validation) through the Train panel."""
        import shutil
        import time

        import numpy as np

        self._requireEngine()
        self.delayDisplay("Making four small labelled volumes")
        widget = self._widget()
        widget.ui.trainCollapsibleButton.collapsed = False
        k, j, i = np.meshgrid(*(np.linspace(-1, 1, 32),) * 3, indexing="ij")
        for index in range(4):
            radius = 0.6 + 0.05 * index
            labels = (((i / radius) ** 2 + (j / (0.9 * radius)) ** 2 + (k / (0.8 * radius)) ** 2) < 1).astype(np.uint8)
            labels[(labels == 1) & (i > 0.1 * index)] = 2
            image = (40.0 * labels + np.random.default_rng(index).normal(0.0, 2.0, labels.shape)).astype(np.float32)
            volume = slicer.util.addVolumeFromArray(image, name=f"train{index}")
            labelMap = slicer.util.addVolumeFromArray(labels, name=f"train{index}_seg", nodeClassName="vtkMRMLLabelMapVolumeNode")
            for node in (volume, labelMap):
                node.SetSpacing(1.5, 1.5, 1.5)
            widget.ui.trainVolumesSelector.setCheckState(volume, qt.Qt.Checked)
            widget.ui.trainSegmentationsSelector.setCheckState(labelMap, qt.Qt.Checked)
        p = widget._parameterNode
        p.trainValidationCount, p.trainSteps, p.trainValidateEvery, p.trainDevice = 2, 4, 2, "cpu"
        out = Path(slicer.app.temporaryPath) / "VoxelMorphRegTest-training"
        shutil.rmtree(out, ignore_errors=True)
        widget.ui.trainOutputPathLineEdit.currentPath = str(out)

        self.delayDisplay("Training")
        widget.ui.trainButton.click()
        runner = widget._trainRunner
        self.assertIsNotNone(runner, widget.ui.trainStatusLabel.text)
        self.assertEqual(widget.ui.trainButton.text, "Stop training")
        start = time.time()
        while runner.running:
            slicer.app.processEvents()  # the panel's timer polls the runner
            time.sleep(0.05)
            self.assertLess(time.time() - start, 1800, "training did not finish in time")
        self.assertEqual(runner.state, "succeeded", runner.error)
        self.assertEqual(runner.checkpoint, out / "best.pt")
        self.assertIn(str(runner.checkpoint), p.userModels)
        self.assertEqual(p.model, str(runner.checkpoint))  # offered and selected in the Register panel
        self.assertEqual(widget.ui.trainButton.text, "Start training")
        self.assertEqual(runner.plot.number_of_rows, 4)
        self.assertEqual(runner.plot.validation_table.GetTable().GetNumberOfRows(), 2)
        plotView = slicer.app.layoutManager().plotWidget(0).mrmlPlotViewNode()
        self.assertEqual(plotView.GetPlotChartNodeID(), runner.plot.chart.GetID())
        p.model = BUNDLED_MODEL
        self.delayDisplay("Test passed")
