"""The Register panel: inputs, settings, outputs, Register/Cancel, progress, fade."""

import logging
from pathlib import Path

import qt

import slicer

from .engine_panel import EnginePanel
from .translation import _

# Settings that are None unless the user unticks their "model default" box: parameter, spin box, check box.
OPTIONAL_SETTINGS = (
    ("refineIterations", "refineIterationsSpinBox", "refineIterationsDefaultCheckBox"),
    ("integrationSteps", "integrationStepsSpinBox", "integrationStepsDefaultCheckBox"),
    ("refineSmoothness", "refineSmoothnessSpinBox", "refineSmoothnessDefaultCheckBox"),
    ("refineLearningRate", "refineLearningRateSpinBox", "refineLearningRateDefaultCheckBox"),
)


class VoxelMorphRegRegisterPanel(EnginePanel):
    """The Register panel: inputs, settings, outputs, Register/Cancel, progress, fade."""

    def __init__(self, widget) -> None:
        self.widget = widget
        self.ui = widget.ui
        self.logic = widget.logic
        self.runner = None
        self.lastResult = None
        self._updatingModels = False
        self._updatingOptional = False

        self.ui.registerButton.connect("clicked(bool)", self.onRegisterButton)
        self.ui.addModelButton.connect("clicked(bool)", self.onAddModel)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.fadeSlider.connect("valueChanged(double)", self.onFadeChanged)
        self.ui.progressBar.setVisible(False)
        for name, spinBoxName, checkBoxName in OPTIONAL_SETTINGS:
            getattr(self.ui, checkBoxName).connect("toggled(bool)", lambda checked, name=name: self.onOptionalSettingChanged(name))
            getattr(self.ui, spinBoxName).connect("valueChanged(double)" if "Smoothness" in name or "LearningRate" in name else "valueChanged(int)",
                                                  lambda value, name=name: self.onOptionalSettingChanged(name))
        # Polls the engine process (progress, end of run) without blocking the GUI.
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(200)
        self._pollTimer.connect("timeout()", self.onPollTimer)

    def cleanup(self) -> None:
        self.cancel()
        self._pollTimer.stop()

    def cancel(self) -> None:
        if self.running:
            self.runner.cancel()

    # -- "model default" settings: None unless the box is unticked -------------------------------

    def onOptionalSettingChanged(self, name) -> None:
        p = self.parameterNode
        if p is None or self._updatingOptional:
            return
        _, spinBoxName, checkBoxName = next(s for s in OPTIONAL_SETTINGS if s[0] == name)
        spinBox = getattr(self.ui, spinBoxName)
        value = None if getattr(self.ui, checkBoxName).checked else spinBox.value
        setattr(p, name, None if value is None else (int(value) if isinstance(spinBox.value, int) else float(value)))

    def _showOptionalSettings(self, p) -> None:
        self._updatingOptional = True
        try:
            for name, spinBoxName, checkBoxName in OPTIONAL_SETTINGS:
                value = getattr(p, name)
                getattr(self.ui, checkBoxName).checked = value is None
                spinBox = getattr(self.ui, spinBoxName)
                spinBox.enabled = value is not None
                if value is not None:
                    spinBox.value = value
        finally:
            self._updatingOptional = False

    # -- model list ------------------------------------------------------------------------------

    def updateModelList(self) -> None:
        """Fill the model combo box: bundled model(s), user-added checkpoints, no model."""
        p = self.parameterNode
        if not p:
            return
        self._updatingModels = True
        try:
            combo = self.ui.modelComboBox
            combo.clear()
            for label, value, tip in self.logic.modelChoices(p.userModels):
                combo.addItem(label, value)
                combo.setItemData(combo.count - 1, tip, qt.Qt.ToolTipRole)
            index = combo.findData(p.model)
            combo.currentIndex = index if index >= 0 else 0
            if index < 0:  # e.g. a scene saved with a checkpoint that is no longer listed
                p.model = combo.itemData(combo.currentIndex)
        finally:
            self._updatingModels = False

    def onModelSelected(self, index) -> None:
        if self._updatingModels or not self.parameterNode or index < 0:
            return
        self.parameterNode.model = self.ui.modelComboBox.itemData(index)

    def onAddModel(self) -> None:
        path = qt.QFileDialog.getOpenFileName(self.widget.parent, _("Add a VoxelMorphReg model"), str(Path.home()), _("Model checkpoint (*.pt *.pth);;All files (*)"))
        if path:
            self.addModel(path, select=True)

    def addModel(self, path, select: bool = True) -> None:
        """Offer a checkpoint in the model list (and select it)."""
        p = self.parameterNode
        if not p:
            return
        path = str(path)
        models = list(p.userModels)
        if path not in models:
            models.append(path)
            p.userModels = models
        if select:
            p.model = path
        self.updateModelList()

    # -- GUI state -------------------------------------------------------------------------------

    def updateGUI(self) -> None:
        p = self.parameterNode
        if not p:
            return
        running = self.running
        self._showOptionalSettings(p)
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
        elif self.widget.installing:
            self.ui.registerButton.text = _("Register")
            self.ui.registerButton.enabled = False
            self.ui.registerButton.toolTip = _("Installing PyTorch and MONAI...")
        else:
            self.ui.registerButton.text = _("Register")
            canRun = bool(p.fixedVolume and p.movingVolume) and p.fixedVolume is not p.movingVolume
            self.ui.registerButton.enabled = canRun
            if canRun:
                self.ui.registerButton.toolTip = _("Register the moving volume onto the fixed one.")
            elif p.fixedVolume and p.fixedVolume is p.movingVolume:
                self.ui.registerButton.toolTip = _("The fixed and the moving volume are the same node; choose another moving volume.")
            else:
                self.ui.registerButton.toolTip = _("Select a fixed and a moving volume.")

    def onFadeChanged(self, value) -> None:
        from VoxelMorphRegLib.mrml import views

        views.set_fade(slicer.mrmlScene, value)

    # -- running ---------------------------------------------------------------------------------

    def onRegisterButton(self) -> None:
        if self.running:
            self.ui.statusLabel.text = _("Cancelling...")
            slicer.app.processEvents()
            self.runner.cancel()
            return
        self.start()

    def start(self):
        """Start a registration with the panel's settings; returns the runner (or None if it did not start)."""
        p = self.parameterNode
        if not p or self.running or self.widget.installing:
            return None
        self.ui.logTextEdit.clear()
        self.ui.statusLabel.text = ""
        try:
            if not self.widget.ensureDependencies(_("Registration")):
                return None
            self.runner = self.logic.register(
                p.fixedVolume,
                p.movingVolume,
                movingSegmentation=p.movingSegmentation,
                fixedSegmentation=p.fixedSegmentation,
                model=p.model,
                device=p.device,
                affine=p.affine,
                brainMask=p.brainMask,
                refineIterations=p.refineIterations,
                refineSmoothness=p.refineSmoothness,
                refineLearningRate=p.refineLearningRate,
                integrationSteps=p.integrationSteps,
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
            self.runner = None
            self.widget.reportStartFailure(_("Registration could not start: {message}"), self.ui.statusLabel, exc)
            self.widget.updateGUIFromParameterNode()
            return None
        self.ui.progressBar.value = 0
        self.ui.progressBar.setVisible(True)
        self.ui.statusLabel.text = _("Starting...")
        self._pollTimer.start()
        self.widget.updateGUIFromParameterNode()
        return self.runner

    def onPollTimer(self) -> None:
        if self.running:
            self.runner.poll()
        if not self.running:
            self._pollTimer.stop()

    def onProgress(self, percent, stage) -> None:
        self.ui.progressBar.value = percent
        self.ui.progressBar.format = f"{stage} (%p%)" if stage else "%p%"
        self.ui.statusLabel.text = stage

    def onLogLine(self, line) -> None:
        self.ui.logTextEdit.appendPlainText(line)

    def onFinished(self, runner) -> None:
        """End of a run: show the result (a failure there is reported, never leaves the panel stuck)."""
        try:
            self.ui.progressBar.setVisible(False)
            if runner.state == "succeeded":
                self.lastResult = runner.result
                seconds = (runner.result.metrics.get("seconds") or {}).get("total")
                done = _("Done") + (f" in {seconds:.1f} s" if isinstance(seconds, (int, float)) else "") + "."
                self.ui.statusLabel.text = done
                try:
                    p = self.parameterNode
                    self.logic.showResult(runner.result, runner.fixed_volume, runner.moving_segmentation, p.fade if p else 0.5)
                except Exception as exc:
                    logging.exception("VoxelMorphReg: the results could not be shown")
                    self.ui.statusLabel.text = done + " " + _("The results are in the scene, but showing them failed: {message}").format(message=exc)
            elif runner.state == "cancelled":
                self.ui.statusLabel.text = _("Cancelled; the scene is unchanged.")
            else:
                self.ui.statusLabel.text = _("Error: {message}").format(message=runner.error)
                slicer.util.errorDisplay(_("Registration failed: {message}").format(message=runner.error), detailedText="\n".join(runner.log[-200:]))
        finally:
            self.widget.updateGUIFromParameterNode()
