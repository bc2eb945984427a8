"""The engine's Python as the panel shows it: PyTorch and MONAI installed on first use, and the device label.

Neither imports torch: what is installed is read from the packages' metadata, and which devices
torch sees is asked of a separate Python process (``VoxelMorphRegLib.mrml.environment``).
"""

import qt

import slicer

from .translation import _


class EngineSetup:
    """Installs the engine's packages when a run needs them (Register and Train disabled meanwhile) and keeps the device label."""

    def __init__(self, widget) -> None:
        self.widget = widget
        self.ui = widget.ui
        self.installing = False
        self._deviceProbe = None
        # Polls the device probe without blocking the GUI.
        self._probeTimer = qt.QTimer()
        self._probeTimer.setInterval(200)
        self._probeTimer.connect("timeout()", self.onProbeTimer)

    def cleanup(self) -> None:
        if self._deviceProbe is not None:
            self._deviceProbe.cancel()
        self._probeTimer.stop()

    # -- dependencies ----------------------------------------------------------------------------

    def ensureDependencies(self, purpose: str) -> bool:
        """Install PyTorch and MONAI if needed, with Register and Train disabled meanwhile; ``False`` if declined.

        Raises what the installation raises (``VoxelMorphRegError`` with what to do)."""
        if self.installing:
            return False
        widget = self.widget
        missingTorch = "torch" in widget.logic.missingDependencies()
        self.installing = True
        widget.updateGUIFromParameterNode()
        slicer.app.processEvents()
        try:
            installed = widget.logic.installDependencies(askConfirmation=True)
        finally:
            self.installing = False
            widget.updateGUIFromParameterNode()
        if installed and missingTorch:
            self.startDeviceProbe()  # torch is there now: say which devices it sees
        if not installed:
            message = _("{purpose} needs PyTorch and MONAI; installation was declined.").format(purpose=purpose)
            (self.ui.statusLabel if purpose == _("Registration") else self.ui.trainStatusLabel).text = message
        return installed

    # -- device check ----------------------------------------------------------------------------

    def startDeviceProbe(self) -> None:
        """Ask a separate Python process which devices torch sees (never imports torch here)."""
        from VoxelMorphRegLib.mrml.environment import DeviceProbe, missing_packages

        if self._deviceProbe is not None:
            self._deviceProbe.cancel()
            self._deviceProbe = None
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
        self._probeTimer.start()

    def onProbeTimer(self) -> None:
        if self._deviceProbe is None:
            self._probeTimer.stop()
            return
        info = self._deviceProbe.poll()
        if info is not None:
            self.ui.deviceStatusLabel.text = info.summary()
            self.ui.deviceStatusLabel.toolTip = f"torch {info.torch or '-'}, monai {info.monai or '-'}" + (f"\n{info.error}" if info.error else "")
            self._deviceProbe = None
            self._probeTimer.stop()
