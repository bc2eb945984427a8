"""The Train panel: data from the scene or a folder, settings, Start/Stop, progress, the live plot."""

from pathlib import Path

import qt

import slicer

from .engine_panel import EnginePanel
from .translation import _


class VoxelMorphRegTrainPanel(EnginePanel):
    """The Train panel: data from the scene or a folder, settings, Start/Stop, progress, the live plot."""

    def __init__(self, widget) -> None:
        self.widget = widget
        self.ui = widget.ui
        self.logic = widget.logic
        self.runner = None

        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)
        self.ui.trainFromSceneRadioButton.connect("toggled(bool)", self.updateGUI)
        self.ui.trainDataFolderButton.connect("clicked(bool)", lambda: self.chooseFolder(self.ui.trainDataPathLineEdit))
        self.ui.trainValidationFolderButton.connect("clicked(bool)", lambda: self.chooseFolder(self.ui.trainValidationPathLineEdit))
        self.ui.trainVolumesSelector.connect("checkedNodesChanged()", self.updateGUI)
        self.ui.trainDataPathLineEdit.connect("currentPathChanged(QString)", self.updateGUI)
        self.ui.trainProgressBar.setVisible(False)
        # Polls the training process (events, log.csv rows for the plot, end of run).
        self._trainTimer = qt.QTimer()
        self._trainTimer.setInterval(500)
        self._trainTimer.connect("timeout()", self.onTrainTimer)

    def cleanup(self) -> None:
        if self.running:
            # The engine stops when its standard input closes (the application's exit), but give it
            # a moment to save last.pt now, then kill it.
            self.runner.stop(wait=True, timeout=15)
        self._trainTimer.stop()

    def updateGUI(self, *args) -> None:
        """Scene or folder inputs, Start/Stop button, inputs locked while a training runs."""
        fromScene = self.ui.trainFromSceneRadioButton.checked
        self.ui.trainSceneSourceWidget.setVisible(fromScene)
        self.ui.trainFolderSourceWidget.setVisible(not fromScene)
        running = self.running
        for widget in (self.ui.trainFromSceneRadioButton, self.ui.trainFromFolderRadioButton, self.ui.trainSceneSourceWidget, self.ui.trainFolderSourceWidget, self.ui.trainSettingsWidget):
            widget.enabled = not running
        if running:
            stopping = self.runner.stopping
            self.ui.trainButton.text = _("Kill training") if stopping else _("Stop training")
            self.ui.trainButton.toolTip = (
                _("The engine is saving last.pt; click to kill it now.") if stopping else _("Stop the training; the engine saves last.pt, which is offered in the model list.")
            )
            self.ui.trainButton.enabled = True
            return
        self.ui.trainButton.text = _("Start training")
        if self.widget.installing:
            self.ui.trainButton.enabled = False
            self.ui.trainButton.toolTip = _("Installing PyTorch and MONAI...")
            return
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
        folder = qt.QFileDialog.getExistingDirectory(self.widget.parent, _("Choose a folder"), pathLineEdit.currentPath or str(Path.home()))
        if folder:
            pathLineEdit.currentPath = folder

    def onTrainButton(self) -> None:
        if self.running:
            if self.runner.stopping:
                self.runner.stop(timeout=0)  # second click: kill now (the next poll does it)
                self.ui.trainStatusLabel.text = _("Killing the training engine...")
            else:
                self.runner.stop()
                self.ui.trainStatusLabel.text = _("Stopping: the engine saves last.pt...")
            self.updateGUI()
            return
        self.start()

    def start(self):
        """Start a training with the panel's settings; returns the runner (or None if it did not start)."""
        p = self.parameterNode
        if not p or self.running or self.widget.installing:
            return None
        self.ui.trainStatusLabel.text = ""
        try:
            if not self.widget.ensureDependencies(_("Training")):
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
            self.runner = self.logic.train(
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
                logCallback=self.widget.registerPanel.onLogLine,
                finishedCallback=self.onTrainFinished,
            )
        except Exception as exc:  # VoxelMorphRegError, or e.g. pip failing while installing dependencies
            self.runner = None
            self.widget.reportStartFailure(_("Training could not start: {message}"), self.ui.trainStatusLabel, exc)
            self.widget.updateGUIFromParameterNode()
            return None
        self.ui.trainProgressBar.value = 0
        self.ui.trainProgressBar.setVisible(True)
        self.ui.trainStatusLabel.text = _("Starting...")
        self._trainTimer.start()
        self.updateGUI()
        return self.runner

    def onTrainTimer(self) -> None:
        runner = self.runner
        if runner is None or not runner.running:
            self._trainTimer.stop()
            return
        if runner.plot is not None and not runner.plot.in_scene:
            # The scene was closed: the curves go on in a new plot.
            self.logic.attachTrainingPlot(runner)
        runner.poll()
        if runner.running:
            self.updateGUI()

    def onTrainProgress(self, percent, stage) -> None:
        self.ui.trainProgressBar.value = percent
        self.ui.trainStatusLabel.text = stage

    def onTrainFinished(self, runner) -> None:
        try:
            self._trainTimer.stop()
            self.ui.trainProgressBar.setVisible(False)
            if runner.state == "succeeded":
                self.widget.addTrainedModel(runner.checkpoint, select=True)
                self.ui.trainStatusLabel.text = _("Done: {path} is selected as the registration model.").format(path=runner.checkpoint)
            elif runner.state == "stopped":
                if runner.checkpoint is not None:
                    self.widget.addTrainedModel(runner.checkpoint, select=False)
                    self.ui.trainStatusLabel.text = _("Stopped at step {step}; {path} was added to the model list. Start again with the same output folder to resume.").format(
                        step=runner.step, path=runner.checkpoint
                    )
                else:
                    self.ui.trainStatusLabel.text = _("Stopped before a checkpoint was saved.")
            else:
                self.ui.trainStatusLabel.text = _("Error: {message}").format(message=runner.error)
                slicer.util.errorDisplay(_("Training failed: {message}").format(message=runner.error), detailedText="\n".join(runner.log[-200:]))
        finally:
            self.updateGUI()
