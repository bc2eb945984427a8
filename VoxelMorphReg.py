"""VoxelMorphReg: learned deformable registration of brain MRI in 3D Slicer.

The registration itself runs as a separate process (Slicer's own Python running
``python -m VoxelMorphRegLib.frontends.cli register ...``), so the application stays responsive
and a Cancel can kill it at once. Everything between the scene and that process lives in
``VoxelMorphRegLib.mrml`` (no Qt there); this file holds only the module, its panel and the
console-friendly logic.
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
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
    vtkMRMLTransformNode,
)

try:
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # Slicer < 5.4

    def _(text):
        return text

    def translate(context, text):
        return text


MODULE_FOLDER = Path(__file__).resolve().parent
MODELS_FOLDER = MODULE_FOLDER / "Resources" / "Models"
BUNDLED_MODEL = "bundled"
NO_MODEL = "none"


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
<b>Jacobian determinant</b> and a <b>metrics table</b> (Dice before/after, folding, runtime).</p>
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
    integrationSteps: 0 means the model's own setting; refineSmoothness below 0 too. fade: foreground (warped) opacity.
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
    refineIterations: Annotated[int, WithinRange(-1, 2000)] = -1  # -1: the model's own default
    integrationSteps: Annotated[int, WithinRange(0, 20)] = 0
    refineSmoothness: Annotated[float, WithinRange(-0.05, 100.0)] = -0.05  # below 0: the model's own default
    outputVolume: vtkMRMLScalarVolumeNode
    outputTransform: vtkMRMLTransformNode
    inverseTransform: bool = False
    outputInverseTransform: vtkMRMLTransformNode
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
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._runner = None
        self._deviceProbe = None
        self._lastResult = None
        self._updatingModels = False
        self._trainRunner = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/VoxelMorphReg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = VoxelMorphRegLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.registerButton.connect("clicked(bool)", self.onRegisterButton)
        self.ui.addModelButton.connect("clicked(bool)", self.onAddModel)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.fadeSlider.connect("valueChanged(double)", self.onFadeChanged)
        self.ui.progressBar.setVisible(False)

        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)
        self.ui.trainFromSceneRadioButton.connect("toggled(bool)", self.updateTrainGUI)
        self.ui.trainDataFolderButton.connect("clicked(bool)", lambda: self.chooseFolder(self.ui.trainDataPathLineEdit))
        self.ui.trainValidationFolderButton.connect("clicked(bool)", lambda: self.chooseFolder(self.ui.trainValidationPathLineEdit))
        self.ui.trainVolumesSelector.connect("checkedNodesChanged()", self.updateTrainGUI)
        self.ui.trainDataPathLineEdit.connect("currentPathChanged(QString)", self.updateTrainGUI)
        self.ui.trainProgressBar.setVisible(False)
        # Polls the training process (progress lines, log.csv rows for the plot, end of run).
        self._trainTimer = qt.QTimer()
        self._trainTimer.setInterval(500)
        self._trainTimer.connect("timeout()", self.onTrainTimer)

        # Polls the engine process (progress lines, end of run) without blocking the GUI.
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(200)
        self._pollTimer.connect("timeout()", self.onPollTimer)

        self.initializeParameterNode()
        self.updateTrainGUI()
        self.startDeviceProbe()

    def cleanup(self) -> None:
        if self._runner is not None and self._runner.running:
            self._runner.cancel()
        if self._deviceProbe is not None:
            self._deviceProbe.cancel()
        if self._trainRunner is not None and self._trainRunner.running:
            # The engine runs in its own session: it would outlive the application. Give it a
            # moment to save last.pt, then kill it.
            self._trainRunner.stop(wait=True, timeout=15)
        self._pollTimer.stop()
        self._trainTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def onSceneStartClose(self, caller, event) -> None:
        if self._runner is not None and self._runner.running:
            self._runner.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.fixedVolume:
            volumes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            volumes = [v for v in volumes if not v.IsA("vtkMRMLLabelMapVolumeNode")]
            if volumes:
                self._parameterNode.fixedVolume = volumes[0]
                if len(volumes) > 1 and not self._parameterNode.movingVolume:
                    self._parameterNode.movingVolume = volumes[1]

    def setParameterNode(self, inputParameterNode: Optional[VoxelMorphRegParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
            self.updateModelList()
            self.updateGUIFromParameterNode()

    # -- model list ------------------------------------------------------------------------------

    def updateModelList(self) -> None:
        """Fill the model combo box: bundled model(s), user-added checkpoints, no model."""
        if not self._parameterNode:
            return
        self._updatingModels = True
        try:
            combo = self.ui.modelComboBox
            combo.clear()
            for label, value, tip in self.logic.modelChoices(self._parameterNode.userModels):
                combo.addItem(label, value)
                combo.setItemData(combo.count - 1, tip, qt.Qt.ToolTipRole)
            index = combo.findData(self._parameterNode.model)
            combo.currentIndex = index if index >= 0 else 0
            if index < 0:  # e.g. a scene saved with a checkpoint that is no longer listed
                self._parameterNode.model = combo.itemData(combo.currentIndex)
        finally:
            self._updatingModels = False

    def onModelSelected(self, index) -> None:
        if self._updatingModels or not self._parameterNode or index < 0:
            return
        self._parameterNode.model = self.ui.modelComboBox.itemData(index)

    def onAddModel(self) -> None:
        path = qt.QFileDialog.getOpenFileName(self.parent, _("Add a VoxelMorphReg model"), str(Path.home()), _("Model checkpoint (*.pt *.pth);;All files (*)"))
        if not path:
            return
        models = list(self._parameterNode.userModels)
        if path not in models:
            models.append(path)
            self._parameterNode.userModels = models
        self._parameterNode.model = path
        self.updateModelList()

    def addTrainedModel(self, path, select: bool = True) -> None:
        """Offer a checkpoint in the model list (and select it)."""
        if not self._parameterNode:
            return
        path = str(path)
        models = list(self._parameterNode.userModels)
        if path not in models:
            models.append(path)
            self._parameterNode.userModels = models
        if select:
            self._parameterNode.model = path
        self.updateModelList()

    # -- device check ----------------------------------------------------------------------------

    def startDeviceProbe(self) -> None:
        """Ask a separate Python process which devices torch sees (never imports torch here)."""
        from VoxelMorphRegLib.mrml.environment import DeviceProbe, missing_packages

        if missing_packages(["torch"]):
            self.ui.deviceStatusLabel.text = _("PyTorch not installed yet (installed on first Register)")
            return
        try:
            self._deviceProbe = DeviceProbe().start()
        except OSError as exc:
            self.ui.deviceStatusLabel.text = _("device check failed: {error}").format(error=exc)
            self._deviceProbe = None
            return
        self.ui.deviceStatusLabel.text = _("checking...")
        self._pollTimer.start()

    def _pollDeviceProbe(self) -> None:
        if self._deviceProbe is None:
            return
        info = self._deviceProbe.poll()
        if info is not None:
            self.ui.deviceStatusLabel.text = info.summary()
            self.ui.deviceStatusLabel.toolTip = f"torch {info.torch or '-'}, monai {info.monai or '-'}" + (f"\n{info.error}" if info.error else "")
            self._deviceProbe = None

    # -- GUI state -------------------------------------------------------------------------------

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if not p:
            return
        running = self._runner is not None and self._runner.running
        self.ui.outputInverseTransformSelector.enabled = p.inverseTransform
        self.ui.outputJacobianSelector.enabled = p.jacobian
        self.ui.outputTableSelector.enabled = p.table
        self.ui.outputSegmentationSelector.enabled = p.movingSegmentation is not None
        for widget in (self.ui.inputsCollapsibleButton, self.ui.settingsCollapsibleButton, self.ui.advancedCollapsibleButton, self.ui.outputsCollapsibleButton):
            widget.enabled = not running
        if running:
            self.ui.registerButton.text = _("Cancel")
            self.ui.registerButton.toolTip = _("Stop the registration; the scene is left as it was.")
            self.ui.registerButton.enabled = True
        else:
            self.ui.registerButton.text = _("Register")
            canRun = bool(p.fixedVolume and p.movingVolume)
            self.ui.registerButton.enabled = canRun
            self.ui.registerButton.toolTip = _("Register the moving volume onto the fixed one.") if canRun else _("Select a fixed and a moving volume.")
        self.updateTrainGUI()

    def onFadeChanged(self, value) -> None:
        from VoxelMorphRegLib.mrml import views

        views.set_fade(slicer.mrmlScene, value)

    # -- running ---------------------------------------------------------------------------------

    def onRegisterButton(self) -> None:
        if self._runner is not None and self._runner.running:
            self.ui.statusLabel.text = _("Cancelling...")
            slicer.app.processEvents()
            self._runner.cancel()
            return
        self.startRegistration()

    def startRegistration(self):
        """Start a registration with the panel's settings; returns the runner (or None if it did not start)."""
        p = self._parameterNode
        self.ui.logTextEdit.clear()
        self.ui.statusLabel.text = ""
        try:
            if not self.logic.installDependencies(askConfirmation=True):
                self.ui.statusLabel.text = _("Registration needs PyTorch and MONAI; installation was declined.")
                return None
            self._runner = self.logic.register(
                p.fixedVolume,
                p.movingVolume,
                movingSegmentation=p.movingSegmentation,
                fixedSegmentation=p.fixedSegmentation,
                model=p.model,
                device=p.device,
                affine=p.affine,
                refineIterations=p.refineIterations,
                refineSmoothness=p.refineSmoothness,
                integrationSteps=p.integrationSteps or None,
                outputVolume=p.outputVolume,
                outputTransform=p.outputTransform,
                inverseTransform=p.inverseTransform,
                outputInverseTransform=p.outputInverseTransform,
                outputSegmentation=p.outputSegmentation,
                jacobian=p.jacobian,
                outputJacobian=p.outputJacobian,
                table=p.table,
                outputTable=p.outputTable,
                wait=False,
                showResult=False,
                progressCallback=self.onProgress,
                logCallback=self.onLogLine,
                finishedCallback=self.onFinished,
            )
        except Exception as exc:  # VoxelMorphRegError, or e.g. pip failing while installing dependencies
            self._runner = None
            self._reportStartFailure(_("Registration could not start: {message}"), self.ui.statusLabel, exc)
            return None
        self.ui.progressBar.value = 0
        self.ui.progressBar.setVisible(True)
        self.ui.statusLabel.text = _("Starting...")
        self._pollTimer.start()
        self.updateGUIFromParameterNode()
        return self._runner

    def _reportStartFailure(self, template: str, statusLabel, exc: Exception) -> None:
        """Show why a run could not start: the engine's one-line message, or the details of anything unexpected."""
        from VoxelMorphRegLib.errors import VoxelMorphRegError

        statusLabel.text = _("Error: {message}").format(message=exc)
        if isinstance(exc, VoxelMorphRegError):
            slicer.util.errorDisplay(template.format(message=exc))
        else:
            logging.exception("VoxelMorphReg: a run could not start")
            slicer.util.errorDisplay(template.format(message=exc), detailedText=str(exc))

    def onPollTimer(self) -> None:
        self._pollDeviceProbe()
        if self._runner is not None and self._runner.running:
            self._runner.poll()
        if self._deviceProbe is None and (self._runner is None or not self._runner.running):
            self._pollTimer.stop()

    def onProgress(self, percent, stage) -> None:
        self.ui.progressBar.value = percent
        self.ui.progressBar.format = f"{stage} (%p%)" if stage else "%p%"
        self.ui.statusLabel.text = stage

    def onLogLine(self, line) -> None:
        self.ui.logTextEdit.appendPlainText(line)

    def onFinished(self, runner) -> None:
        self.ui.progressBar.setVisible(False)
        if runner.state == "succeeded":
            self._lastResult = runner.result
            self.logic.showResult(runner.result, runner.fixed_volume, runner.moving_segmentation, self._parameterNode.fade if self._parameterNode else 0.5)
            seconds = (runner.result.metrics.get("seconds") or {}).get("total")
            self.ui.statusLabel.text = _("Done") + (f" in {seconds:.1f} s" if isinstance(seconds, (int, float)) else "") + "."
        elif runner.state == "cancelled":
            self.ui.statusLabel.text = _("Cancelled; the scene is unchanged.")
        else:
            self.ui.statusLabel.text = _("Error: {message}").format(message=runner.error)
            slicer.util.errorDisplay(_("Registration failed: {message}").format(message=runner.error), detailedText="\n".join(runner.log[-200:]))
        self.updateGUIFromParameterNode()

    # -- training --------------------------------------------------------------------------------

    def _trainingRunning(self) -> bool:
        return self._trainRunner is not None and self._trainRunner.running

    def updateTrainGUI(self, *args) -> None:
        """Scene or folder inputs, Start/Stop button, inputs locked while a training runs."""
        fromScene = self.ui.trainFromSceneRadioButton.checked
        self.ui.trainSceneSourceWidget.setVisible(fromScene)
        self.ui.trainFolderSourceWidget.setVisible(not fromScene)
        running = self._trainingRunning()
        for widget in (self.ui.trainFromSceneRadioButton, self.ui.trainFromFolderRadioButton, self.ui.trainSceneSourceWidget, self.ui.trainFolderSourceWidget, self.ui.trainSettingsWidget):
            widget.enabled = not running
        if running:
            stopping = self._trainRunner.stopping
            self.ui.trainButton.text = _("Kill training") if stopping else _("Stop training")
            self.ui.trainButton.toolTip = (
                _("The engine is saving last.pt; click to kill it now.") if stopping else _("Stop the training; the engine saves last.pt, which is offered in the model list.")
            )
            self.ui.trainButton.enabled = True
            return
        self.ui.trainButton.text = _("Start training")
        if fromScene:
            count = len(self.ui.trainVolumesSelector.checkedNodes())
            canRun = count >= 2
            why = _("Check at least two training volumes.")
        else:
            canRun = bool(self.ui.trainDataPathLineEdit.currentPath.strip())
            why = _("Choose a training folder or CSV file.")
        self.ui.trainButton.enabled = canRun
        self.ui.trainButton.toolTip = _("Train in a background process; click again to stop.") if canRun else why

    def chooseFolder(self, pathLineEdit) -> None:
        folder = qt.QFileDialog.getExistingDirectory(self.parent, _("Choose a folder"), pathLineEdit.currentPath or str(Path.home()))
        if folder:
            pathLineEdit.currentPath = folder

    def onTrainButton(self) -> None:
        if self._trainingRunning():
            if self._trainRunner.stopping:
                self._trainRunner.stop(timeout=0)  # second click: kill now (the next poll does it)
                self.ui.trainStatusLabel.text = _("Killing the training engine...")
            else:
                self._trainRunner.stop()
                self.ui.trainStatusLabel.text = _("Stopping: the engine saves last.pt...")
            self.updateTrainGUI()
            return
        self.startTraining()

    def startTraining(self):
        """Start a training with the panel's settings; returns the runner (or None if it did not start)."""
        p = self._parameterNode
        if not p:
            return None
        self.ui.trainStatusLabel.text = ""
        try:
            if not self.logic.installDependencies(askConfirmation=True):
                self.ui.trainStatusLabel.text = _("Training needs PyTorch and MONAI; installation was declined.")
                return None
            outputFolder = self.ui.trainOutputPathLineEdit.currentPath.strip() or str(self.logic.defaultTrainingFolder())
            self.ui.trainOutputPathLineEdit.currentPath = outputFolder
            inputs = {}
            if self.ui.trainFromSceneRadioButton.checked:
                inputs["volumes"] = list(self.ui.trainVolumesSelector.checkedNodes())
                inputs["segmentations"] = list(self.ui.trainSegmentationsSelector.checkedNodes())
                inputs["validationCount"] = p.trainValidationCount
            else:
                inputs["dataPath"] = self.ui.trainDataPathLineEdit.currentPath.strip() or None
                inputs["validationPath"] = self.ui.trainValidationPathLineEdit.currentPath.strip() or None
            self._trainRunner = self.logic.train(
                **inputs,
                atlasNode=p.trainAtlas,
                outputFolder=outputFolder,
                steps=p.trainSteps,
                learningRate=p.trainLearningRate,
                similarity=p.trainSimilarity,
                smoothnessWeight=p.trainSmoothnessWeight,
                diceWeight=p.trainDiceWeight,
                validateEvery=p.trainValidateEvery,
                device=p.trainDevice,
                initModel=self.logic.modelFile(p.model) if p.trainFineTune else None,
                wait=False,
                showPlot=True,
                progressCallback=self.onTrainProgress,
                logCallback=self.onLogLine,
                finishedCallback=self.onTrainFinished,
            )
        except Exception as exc:  # VoxelMorphRegError, or e.g. pip failing while installing dependencies
            self._trainRunner = None
            self._reportStartFailure(_("Training could not start: {message}"), self.ui.trainStatusLabel, exc)
            return None
        self.ui.trainProgressBar.value = 0
        self.ui.trainProgressBar.setVisible(True)
        self.ui.trainStatusLabel.text = _("Starting...")
        self._trainTimer.start()
        self.updateTrainGUI()
        return self._trainRunner

    def onTrainTimer(self) -> None:
        runner = self._trainRunner
        if runner is None or not runner.running:
            self._trainTimer.stop()
            return
        if runner.plot is not None and not runner.plot.in_scene:
            # The scene was closed: the curves go on in a new plot.
            self.logic.attachTrainingPlot(runner)
        runner.poll()
        if runner.running:
            self.updateTrainGUI()

    def onTrainProgress(self, percent, stage) -> None:
        self.ui.trainProgressBar.value = percent
        self.ui.trainStatusLabel.text = stage

    def onTrainFinished(self, runner) -> None:
        self._trainTimer.stop()
        self.ui.trainProgressBar.setVisible(False)
        if runner.state == "succeeded":
            self.addTrainedModel(runner.checkpoint, select=True)
            self.ui.trainStatusLabel.text = _("Done: {path} is selected as the registration model.").format(path=runner.checkpoint)
        elif runner.state == "stopped":
            if runner.checkpoint is not None:
                self.addTrainedModel(runner.checkpoint, select=False)
                self.ui.trainStatusLabel.text = _("Stopped at step {step}; {path} was added to the model list. Start again with the same output folder to resume.").format(
                    step=runner.step, path=runner.checkpoint
                )
            else:
                self.ui.trainStatusLabel.text = _("Stopped before a checkpoint was saved.")
        else:
            self.ui.trainStatusLabel.text = _("Error: {message}").format(message=runner.error)
            slicer.util.errorDisplay(_("Training failed: {message}").format(message=runner.error), detailedText="\n".join(runner.log[-200:]))
        self.updateTrainGUI()


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
        return sorted(MODELS_FOLDER.glob("*.pt")) if MODELS_FOLDER.is_dir() else []

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

        if not model or model == BUNDLED_MODEL:
            bundled = self.bundledModels()
            if not bundled:
                raise VoxelMorphRegError(f"no bundled model found in {MODELS_FOLDER}")
            return str(bundled[0])
        if model == NO_MODEL:
            raise VoxelMorphRegError("fine-tuning needs a model: select the bundled model or a checkpoint in Settings")
        if not Path(model).is_file():
            raise VoxelMorphRegError(f"{model}: model file not found")
        return str(model)

    @staticmethod
    def missingDependencies() -> list:
        from VoxelMorphRegLib.mrml.environment import missing_packages

        return missing_packages()

    def installDependencies(self, askConfirmation: bool = True) -> bool:
        """Install PyTorch (through the PyTorch extension) and MONAI if missing; ``False`` if declined.

        Never reinstalls SimpleITK, numpy or vtk: MONAI is installed without its dependencies
        (they are torch and numpy, both present by then).
        """
        from VoxelMorphRegLib.errors import VoxelMorphRegError

        missing = self.missingDependencies()
        if not missing:
            return True
        if askConfirmation and not slicer.app.testingEnabled():
            if not slicer.util.confirmOkCancelDisplay(
                _("VoxelMorphReg needs these Python packages: {names}.\nDownload and install them now? This can take several minutes.").format(names=", ".join(missing)),
                windowTitle=_("Install dependencies"),
            ):
                return False
        if "torch" in missing:
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                raise VoxelMorphRegError("PyTorch is needed: install the 'PyTorch' extension with the Extensions Manager, restart Slicer and try again") from None
            with slicer.util.WaitCursor():
                torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=">=2.0")
            if torch is None:
                raise VoxelMorphRegError("PyTorch installation failed; see the Python console for details")
        if "monai" in missing:
            with slicer.util.WaitCursor():
                slicer.util.pip_install("monai>=1.3 --no-deps")
        still = self.missingDependencies()
        if still:
            raise VoxelMorphRegError(f"still missing after installation: {', '.join(still)}; a restart of Slicer may help")
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
        from VoxelMorphRegLib.errors import VoxelMorphRegError
        from VoxelMorphRegLib.mrml import training_runner

        missing = self.missingDependencies()
        if missing:
            raise VoxelMorphRegError(f"missing Python packages: {', '.join(missing)}; install them with VoxelMorphRegLogic().installDependencies()")
        options = training_runner.TrainOptions(
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
            pairs = training_runner.pair_segmentations(list(volumes), list(segmentations or []))
            inputs["subjects"], inputs["validation_subjects"] = training_runner.split_validation(pairs, validationCount)
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
        runner.start()
        if showPlot:
            self.attachTrainingPlot(runner)
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
        wait=True,
        showResult=True,
        progressCallback=None,
        logCallback=None,
        finishedCallback=None,
    ):
        """Register ``movingNode`` onto ``fixedNode``.

        ``model``: None or "bundled" (the bundled model), "none" (per-pair optimisation only) or a
        checkpoint file. ``device``: "auto", "cpu" or "cuda". ``refineIterations`` and
        ``refineSmoothness``: the per-pair refinement (None or below 0: the model's defaults). ``output*``: existing nodes to
        overwrite; ``None`` creates new nodes (only when the run succeeds).

        With ``wait=True`` (default) this blocks and returns a ``RegistrationResult`` whose
        attributes ``warped_volume``, ``transform``, ``inverse_transform``, ``segmentation``,
        ``jacobian`` and ``table`` are the output nodes (``result.nodes()`` gives them as a dict);
        errors raise ``VoxelMorphRegError`` with the engine's one-line message. With
        ``wait=False`` it returns the started ``RegistrationRunner``; call its ``poll()``
        regularly (or ``wait()``), ``cancel()`` to stop it.
        """
        from VoxelMorphRegLib.errors import VoxelMorphRegError
        from VoxelMorphRegLib.mrml.outputs import OutputTargets
        from VoxelMorphRegLib.mrml.runner import RegistrationOptions, RegistrationRunner

        missing = self.missingDependencies()
        if missing:
            raise VoxelMorphRegError(f"missing Python packages: {', '.join(missing)}; install them with VoxelMorphRegLogic().installDependencies()")
        options = RegistrationOptions(
            model=model or BUNDLED_MODEL,
            device=device or "auto",
            affine=bool(affine),
            refine_iterations=None if refineIterations is None or int(refineIterations) < 0 else int(refineIterations),
            refine_smoothness=None if refineSmoothness is None or float(refineSmoothness) < 0 else float(refineSmoothness),
            integration_steps=int(integrationSteps) if integrationSteps else None,
            inverse_transform=bool(inverseTransform or outputInverseTransform),
            jacobian=bool(jacobian or outputJacobian),
            table=bool(table or outputTable),
        )
        targets = OutputTargets(
            warped_volume=outputVolume,
            transform=outputTransform,
            inverse_transform=outputInverseTransform,
            segmentation=outputSegmentation if movingSegmentation is not None else None,
            jacobian=outputJacobian,
            table=outputTable,
        )

        def onFinished(runner):
            if showResult and runner.state == "succeeded":
                self.showResult(runner.result, fixedNode, movingSegmentation)
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
        """Fixed volume behind, warped volume in front at ``opacity``, warped segmentation as outlines, views fitted."""
        from VoxelMorphRegLib.mrml import views

        app = getattr(slicer, "app", None)
        layoutManager = app.layoutManager() if app is not None and hasattr(app, "layoutManager") else None
        sliceLogics = layoutManager.mrmlSliceLogics() if layoutManager is not None else None
        hidden = [movingSegmentation] if movingSegmentation is not None and movingSegmentation.IsA("vtkMRMLSegmentationNode") else []
        views.show_registration(slicer.mrmlScene, fixedNode, result.warped_volume, result.segmentation, opacity, sliceLogics, hidden)


#
# VoxelMorphRegTest
#


class VoxelMorphRegTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (needs the engine's dependencies and the sample data download)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_RegisterThroughWidget()
        self.setUp()
        self.test_FailureLeavesSceneUnchanged()
        self.setUp()
        self.test_CancelLeavesSceneUnchanged()
        self.setUp()
        self.test_TrainThroughWidget()

    def _loadSamples(self):
        import SampleData

        fixed = SampleData.downloadSample("MRBrainTumor1")
        moving = SampleData.downloadSample("MRBrainTumor2")
        self.assertIsNotNone(fixed)
        self.assertIsNotNone(moving)
        return fixed, moving

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
        self.delayDisplay("Loading sample data")
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
