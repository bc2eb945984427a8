"""The module's panels and Logic, run with the application stand-ins of slicer_app_fakes on the real MRML.

Each test is one of the issue-12 defects as a user meets it in the panel: choices that must survive
leaving and re-entering the module (Slicer 5.6/5.8's connectGui), a panel that must not stay stuck
when showing the results fails, Register/Train disabled while PyTorch is installed, the device label
after the install, distinct fixed and moving volumes, "model default" settings that are None, and a
training whose plot cannot be built leaving no engine running.
"""

import sys

import numpy as np
import pytest
from conftest import require_slicer_core

require_slicer_core()
sitk = pytest.importorskip("SimpleITK")

import slicer_app_fakes  # noqa: E402
from VoxelMorphRegLib.mrml import environment as _environment  # noqa: E402

REAL_DEPENDENCY_PROBLEMS = _environment.dependency_problems
REAL_MISSING_PACKAGES = _environment.missing_packages


def _volume(slicer, name, seed):
    from VoxelMorphRegLib.mrml import volumes

    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray((rng.random((10, 12, 14)) * 100).astype(np.float32))
    image.SetSpacing((1.5, 1.5, 1.5))
    return volumes.sitk_to_volume(image, scene=slicer.mrmlScene, name=name)


@pytest.fixture(params=[(5, 6), (5, 10)], ids=["slicer5.6", "slicer5.10"])
def app(request, monkeypatch, tmp_path):
    module, slicer, messages = slicer_app_fakes.install(monkeypatch, tmp_path, version=request.param)
    from VoxelMorphRegLib.mrml import environment

    monkeypatch.setattr(environment, "missing_packages", lambda names=environment.REQUIRED_PACKAGES: [])
    monkeypatch.setattr(environment, "dependency_problems", lambda: [])

    _instant_device_probe(monkeypatch, environment)
    widget = module.VoxelMorphRegWidget()
    widget.setup()
    yield {"module": module, "slicer": slicer, "widget": widget, "messages": messages}
    widget.cleanup()


def _instant_device_probe(monkeypatch, environment):
    """The device check's process, answered at once (torch 2.8.0, MONAI 1.5.2)."""

    class Probe:
        def __init__(self, *args, **kwargs):
            pass

        def start(self):
            return self

        def poll(self):
            return environment.DeviceInfo(torch="2.8.0", monai="1.5.2")

        def cancel(self):
            pass

    monkeypatch.setattr(environment, "DeviceProbe", Probe)


def _fake_engine(monkeypatch, tmp_path, mode="ok"):
    """The registration runner starts the fake engine of test_mrml_runner (real parser, contract events)."""
    from test_mrml_runner import FAKE_ENGINE

    from VoxelMorphRegLib.mrml import runner

    engine = tmp_path / "fake_engine.py"
    engine.write_text(FAKE_ENGINE)
    monkeypatch.setenv("FAKE_ENGINE_MODE", mode)
    monkeypatch.setenv("FAKE_ENGINE_RECORD", str(tmp_path / "record.json"))
    monkeypatch.setattr(runner, "default_engine_prefix", lambda python=None: [sys.executable, str(engine)])


def _run_to_end(panel, timeout=60):
    import time

    deadline = time.monotonic() + timeout
    while panel.running:
        assert time.monotonic() < deadline, "\n".join(panel.runner.log[-20:])
        panel.onPollTimer()
        time.sleep(0.02)


def test_choices_survive_leaving_and_entering_the_module(app):
    widget, ui = app["widget"], app["widget"].ui
    ui.deviceComboBox.currentIndex = 2  # the user picks "cuda"
    ui.trainSimilarityComboBox.currentIndex = 1  # and "mse" in the Train panel
    assert widget._parameterNode.device == "cuda" and widget._parameterNode.trainSimilarity == "mse"
    for _ in range(3):
        widget.exit()
        widget.enter()
    p = widget._parameterNode
    assert (p.device, p.trainSimilarity) == ("cuda", "mse")
    assert (ui.deviceComboBox.currentText, ui.trainSimilarityComboBox.currentText) == ("cuda", "mse")
    # One connector per widget, however often the module was entered.
    assert ui.deviceComboBox.connections("currentIndexChanged(int)") == 1
    assert p.connectorCount() == len([w for w in vars(ui).values() if w.property("SlicerParameterName")])


def test_a_failure_while_showing_the_result_leaves_the_panel_usable(app, monkeypatch, tmp_path):
    slicer, widget, module = app["slicer"], app["widget"], app["module"]
    fixed, moving = _volume(slicer, "fixed", 1), _volume(slicer, "moving", 2)
    p = widget._parameterNode
    assert (p.fixedVolume, p.movingVolume) == (fixed, moving)
    _fake_engine(monkeypatch, tmp_path)

    def broken_show(*args, **kwargs):
        raise TypeError("FitSliceToBackground() takes exactly 2 arguments (0 given)")  # what Slicer 5.6 raised

    monkeypatch.setattr(module.VoxelMorphRegLogic, "showResult", broken_show)
    widget.ui.registerButton.click()
    assert widget.ui.registerButton.text == "Cancel" and not widget.ui.inputsCollapsibleButton.enabled
    _run_to_end(widget.registerPanel)
    runner = widget._runner
    assert runner.state == "succeeded" and runner.result.warped_volume.GetScene() is slicer.mrmlScene
    assert widget.ui.registerButton.text == "Register" and widget.ui.registerButton.enabled
    assert widget.ui.inputsCollapsibleButton.enabled and not widget.ui.progressBar.visible
    assert "showing them failed" in widget.ui.statusLabel.text
    # The console API: the result is returned, not an exception after the nodes were added.
    result = widget.logic.register(fixed, moving, wait=True)
    assert result.warped_volume is not None


def test_register_and_train_are_disabled_while_dependencies_install(app, monkeypatch):
    slicer, widget = app["slicer"], app["widget"]
    _volume(slicer, "fixed", 1), _volume(slicer, "moving", 2)
    calls, seen = [], []

    def install(askConfirmation=True):
        calls.append(askConfirmation)
        seen.append((widget.ui.registerButton.enabled, widget.ui.trainButton.enabled))
        widget.ui.registerButton.click()  # an impatient second click
        widget.trainPanel.start()
        return False  # declined

    monkeypatch.setattr(widget.logic, "installDependencies", install)
    widget.ui.registerButton.click()
    assert calls == [True] and seen == [(False, False)]
    assert widget._runner is None and widget.ui.registerButton.enabled
    assert "installation was declined" in widget.ui.statusLabel.text


def test_device_label_is_refreshed_once_torch_is_installed(app, monkeypatch):
    from VoxelMorphRegLib.mrml import environment

    widget = app["widget"]
    state = {"torch": False}
    monkeypatch.setattr(environment, "missing_packages", lambda names=environment.REQUIRED_PACKAGES: [] if state["torch"] else [n for n in names if n == "torch"])
    widget.startDeviceProbe()
    assert "not installed" in widget.ui.deviceStatusLabel.text
    monkeypatch.setattr(widget.logic, "missingDependencies", lambda: [] if state["torch"] else ["torch"])

    def install(askConfirmation=True):
        state["torch"] = True
        return True

    monkeypatch.setattr(widget.logic, "installDependencies", install)
    assert widget.ensureDependencies("Registration")
    widget.onProbeTimer()
    assert widget.ui.deviceStatusLabel.text == "CPU only (no CUDA GPU found)"


def test_fixed_and_moving_default_to_two_different_volumes(app):
    slicer, widget = app["slicer"], app["widget"]
    p = widget._parameterNode
    assert p.fixedVolume is None and p.movingVolume is None  # empty scene
    first = _volume(slicer, "first", 1)
    label = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    second = _volume(slicer, "second", 2)
    assert (p.fixedVolume, p.movingVolume) == (first, second) and label not in (p.fixedVolume, p.movingVolume)
    _volume(slicer, "third", 3)
    assert (p.fixedVolume, p.movingVolume) == (first, second)  # chosen volumes are not replaced
    p.movingVolume = first
    widget.updateGUIFromParameterNode()
    assert not widget.ui.registerButton.enabled and "same node" in widget.ui.registerButton.toolTip


def test_model_default_settings_are_none_and_reach_the_engine_as_unset(app, monkeypatch, tmp_path):
    import json

    slicer, widget = app["slicer"], app["widget"]
    ui, p = widget.ui, widget._parameterNode
    _volume(slicer, "fixed", 1), _volume(slicer, "moving", 2)
    assert (p.refineIterations, p.refineSmoothness, p.refineLearningRate, p.integrationSteps) == (None, None, None, None)
    assert ui.refineIterationsDefaultCheckBox.checked and not ui.refineIterationsSpinBox.enabled
    ui.refineIterationsDefaultCheckBox.checked = False
    assert p.refineIterations == 200 and ui.refineIterationsSpinBox.enabled
    ui.refineIterationsSpinBox.value = 0  # network only: a real value, not "model default"
    ui.refineSmoothnessDefaultCheckBox.checked = False
    ui.refineSmoothnessSpinBox.value = 0.0
    assert (p.refineIterations, p.refineSmoothness) == (0, 0.0)
    _fake_engine(monkeypatch, tmp_path)
    ui.registerButton.click()
    _run_to_end(widget.registerPanel)
    argv = json.loads((tmp_path / "record.json").read_text())["argv"]
    assert argv[argv.index("--refine") + 1] == "0" and argv[argv.index("--refine-smoothness") + 1] == "0.0"
    assert "--refine-learning-rate" not in argv and "--integration-steps" not in argv  # unset: the model's
    ui.refineIterationsDefaultCheckBox.checked = True
    assert p.refineIterations is None


def test_settings_saved_by_the_earlier_module_mean_model_default(app):
    """Scenes saved before: -1 iterations, -0.05 smoothness and 0 integration steps stood for "model default"."""
    widget = app["widget"]
    p = widget._parameterNode
    p.refineIterations, p.refineSmoothness, p.integrationSteps = -1, -0.05, 0
    widget.exit()
    widget.enter()
    p = widget._parameterNode
    assert (p.refineIterations, p.refineSmoothness, p.integrationSteps) == (None, None, None)


def test_training_whose_plot_cannot_be_built_starts_no_engine(app, monkeypatch, tmp_path):
    from VoxelMorphRegLib.errors import VoxelMorphRegError
    from VoxelMorphRegLib.mrml import training_plot, training_runner

    slicer, widget = app["slicer"], app["widget"]
    volumes = [_volume(slicer, f"train{i}", i) for i in range(3)]
    started = []
    monkeypatch.setattr(training_runner.TrainingRunner, "start", lambda self: started.append(self) or self)

    def no_plot(*args, **kwargs):
        raise AttributeError("'vtkMRMLTableNode' object has no attribute 'SetUseColumnTitleAsColumnHeader'")

    monkeypatch.setattr(training_plot, "TrainingPlot", no_plot)
    nodes = slicer.mrmlScene.GetNumberOfNodes()
    with pytest.raises(AttributeError):
        widget.logic.train(volumes=volumes, outputFolder=str(tmp_path / "model"), wait=False)
    assert started == [] and slicer.mrmlScene.GetNumberOfNodes() == nodes
    # Through the panel: the error is shown, no runner is left.
    for volume in volumes:
        widget.ui.trainVolumesSelector.setCheckState(volume, 2)
    widget.ui.trainOutputPathLineEdit.currentPath = str(tmp_path / "model2")
    widget.ui.trainButton.click()
    assert widget._trainRunner is None and started == [] and widget.ui.trainStatusLabel.text.startswith("Error:")
    assert app["messages"] and "Training could not start" in app["messages"][-1][1]
    del VoxelMorphRegError


def test_a_failure_after_the_engine_started_stops_it(app, monkeypatch, tmp_path):
    from VoxelMorphRegLib.mrml import training_runner

    slicer, widget, module = app["slicer"], app["widget"], app["module"]
    volumes = [_volume(slicer, f"train{i}", i) for i in range(3)]
    stopped = []
    monkeypatch.setattr(training_runner.TrainingRunner, "start", lambda self: setattr(self, "state", "running") or self)
    monkeypatch.setattr(training_runner.TrainingRunner, "stop", lambda self, wait=False, timeout=None: stopped.append((wait, timeout)))

    def broken_show(plot):
        raise RuntimeError("no plot view")

    monkeypatch.setattr(module.VoxelMorphRegLogic, "showTrainingPlot", staticmethod(broken_show))
    with pytest.raises(RuntimeError):
        widget.logic.train(volumes=volumes, outputFolder=str(tmp_path / "model"), wait=False)
    assert stopped == [(True, 15)]


def test_the_extensions_own_test_skips_offline_with_the_reason(app, monkeypatch):
    """On the extensions build machines (testing mode, no network) the module's test must pass or skip, never download."""
    import inspect
    import unittest

    from VoxelMorphRegLib.mrml import environment

    module = app["module"]
    source = inspect.getsource(module.VoxelMorphRegTest)
    assert "SampleData" not in source and "installDependencies(" not in source.replace("VoxelMorphRegLogic().installDependencies()", "")
    monkeypatch.setattr(environment, "dependency_problems", lambda: ["missing Python packages: torch, monai"])
    result = unittest.TextTestRunner(stream=open("/dev/null", "w") if sys.platform != "win32" else None, verbosity=0).run(unittest.TestLoader().loadTestsFromTestCase(module.VoxelMorphRegTest))
    assert result.wasSuccessful() and result.testsRun == 4 and len(result.skipped) == 4, result.errors
    assert all("does not download them" in reason and "torch, monai" in reason for _, reason in result.skipped)
    shown = []
    monkeypatch.setattr(module.VoxelMorphRegTest, "delayDisplay", lambda self, message, *args: shown.append(message), raising=False)
    module.VoxelMorphRegTest().runTest()  # "Reload and Test": no exception, four lines saying why
    assert len([line for line in shown if " skipped: " in line]) == 4


def test_the_module_bundles_the_model_the_engine_calls_bundled(app, monkeypatch, tmp_path):
    """One place decides "bundled" (model_resolution): with v1 and v2 present it is v2, not the first file name."""
    from VoxelMorphRegLib import model_resolution

    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("voxelmorphreg_v1.pt", "voxelmorphreg_v2.pt", "aaa_other.pt"):
        (folder / name).write_bytes(b"")
    monkeypatch.setenv(model_resolution.MODEL_DIR_VARIABLE, str(folder))
    logic = app["widget"].logic
    choices = logic.modelChoices([])
    assert choices[0][1] == "bundled" and "voxelmorphreg_v2.pt" in choices[0][2]
    assert logic.modelFile("bundled") == str(model_resolution.bundled_model_path()) == str(folder / "voxelmorphreg_v2.pt")
    assert [c[0] for c in choices[1:-1]] == ["Bundled: voxelmorphreg_v1"] and choices[-1][1] == "none"


def _packages(monkeypatch, versions, monai_requires):
    import importlib.metadata

    from VoxelMorphRegLib.mrml import environment

    monkeypatch.setattr(environment, "dependency_problems", REAL_DEPENDENCY_PROBLEMS)
    monkeypatch.setattr(environment, "installed_version", lambda name: versions.get(name))
    monkeypatch.setattr(environment, "missing_packages", lambda names=environment.REQUIRED_PACKAGES: [n for n in names if versions.get(n) is None])
    monkeypatch.setattr(importlib.metadata, "requires", lambda name: list(monai_requires))


def test_monai_is_installed_to_fit_the_torch_that_is_there(app, monkeypatch):
    from VoxelMorphRegLib.mrml import environment

    slicer, logic = app["slicer"], app["widget"].logic
    versions = {"torch": "2.8.0", "numpy": "2.1.0", "monai": None}
    _packages(monkeypatch, versions, ["torch>=2.8.0"])
    installed = []

    def pip_install(arguments):
        installed.append(arguments)
        versions["monai"] = "1.6.1"

    monkeypatch.setattr(slicer.util, "pip_install", pip_install)
    assert logic.installDependencies(askConfirmation=False)
    assert installed == [[environment.monai_requirement("2.8.0", sys.version_info[:2], "2.1.0"), "--no-deps"]]


def test_dependencies_that_cannot_fit_say_what_to_do(app, monkeypatch):
    from VoxelMorphRegLib.errors import VoxelMorphRegError

    slicer, logic = app["slicer"], app["widget"].logic
    installed = []
    monkeypatch.setattr(slicer.util, "pip_install", installed.append)
    _packages(monkeypatch, {"torch": "2.0.1", "numpy": "1.26.4", "monai": "1.3.2"}, ["torch>=1.9"])
    with pytest.raises(VoxelMorphRegError, match="PyTorch 2.0.1 is too old .*PyTorch Utils"):
        logic.installDependencies(askConfirmation=False)
    _packages(monkeypatch, {"torch": "2.3.1", "numpy": "2.0.1", "monai": None}, [])
    with pytest.raises(VoxelMorphRegError, match="no MONAI release fits torch 2.3.1 with numpy 2.0.1: update PyTorch to 2.4.1 or later"):
        logic.installDependencies(askConfirmation=False)
    _packages(monkeypatch, {"torch": "2.8.0", "numpy": "2.1.0", "monai": None}, [])
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # the PyTorch extension is not installed
    with pytest.raises(VoxelMorphRegError, match="monai still missing after the installation; restart Slicer"):  # pip is asked for MONAI only
        logic.installDependencies(askConfirmation=False)  # pip_install here records but installs nothing
    assert installed and installed[-1][1] == "--no-deps"
    _packages(monkeypatch, {"torch": None, "numpy": "2.1.0", "monai": None}, [])
    with pytest.raises(VoxelMorphRegError, match="install the 'PyTorch' extension with the Extensions Manager"):
        logic.installDependencies(askConfirmation=False)
    # Register refuses to start with the reason, before writing anything.
    _packages(monkeypatch, {"torch": "2.3.1", "numpy": "1.26.4", "monai": "1.5.2"}, ["torch>=2.4.1"])
    with pytest.raises(VoxelMorphRegError, match="MONAI 1.5.2 needs torch >=2.4.1, but torch 2.3.1 is installed"):
        logic.register(None, None, wait=False)


def test_a_training_that_ends_while_the_module_is_not_shown_still_offers_its_model(app, tmp_path):
    widget = app["widget"]
    widget.exit()  # the user went to another module
    (tmp_path / "best.pt").write_bytes(b"")
    widget.addTrainedModel(tmp_path / "best.pt", select=True)
    widget.enter()
    assert widget._parameterNode.model == str(tmp_path / "best.pt") and str(tmp_path / "best.pt") in widget._parameterNode.userModels
    assert widget.ui.modelComboBox.itemData(widget.ui.modelComboBox.currentIndex) == str(tmp_path / "best.pt")


def test_the_brain_mask_check_box_is_on_by_default_and_reaches_the_engine(app, monkeypatch, tmp_path):
    """Ticked: --brain-mask auto, the fixed mask comes back as an outlined segmentation shown over the fixed volume; unticked: off, no mask."""
    import json

    slicer, widget = app["slicer"], app["widget"]
    ui, p = widget.ui, widget._parameterNode
    fixed, moving = _volume(slicer, "fixed", 1), _volume(slicer, "moving", 2)
    assert p.brainMask is True and ui.brainMaskCheckBox.checked
    tip = ui.brainMaskCheckBox.toolTip
    assert "whole-head" in tip and "brain extraction" in tip and "skull-stripped" in tip and "outline" in tip
    _fake_engine(monkeypatch, tmp_path)
    monkeypatch.setenv("FAKE_ENGINE_BRAIN", "whole-head")
    shown = []
    monkeypatch.setattr(widget.logic, "showResult", lambda result, *args: shown.append(result))
    ui.registerButton.click()
    _run_to_end(widget.registerPanel)
    argv = json.loads((tmp_path / "record.json").read_text())["argv"]
    assert argv[argv.index("--brain-mask") + 1] == "auto"
    result = widget._runner.result
    assert result.brain_mask.GetName() == "fixed brain mask" and result.brain_mask.GetScene() is slicer.mrmlScene
    assert result.moving_brain_mask is None and shown == [result]  # the panel shows it (Logic.showResult)
    ui.brainMaskCheckBox.checked = False
    assert p.brainMask is False
    count = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    ui.registerButton.click()
    _run_to_end(widget.registerPanel)
    argv = json.loads((tmp_path / "record.json").read_text())["argv"]
    assert argv[argv.index("--brain-mask") + 1] == "off"
    assert widget._runner.result.brain_mask is None and slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == count
    widget.exit()
    widget.enter()
    assert widget._parameterNode.brainMask is False and not ui.brainMaskCheckBox.checked  # saved with the scene's parameter node


def test_the_console_brain_mask_arguments(app, monkeypatch, tmp_path):
    """register(brainMask=, outputBrainMask=, movingBrainMask=, outputMovingBrainMask=): the nodes, their display, the views."""
    import json

    slicer, widget = app["slicer"], app["widget"]
    scene = slicer.mrmlScene
    fixed, moving = _volume(slicer, "T1 fixed", 1), _volume(slicer, "T1 moving", 2)
    _fake_engine(monkeypatch, tmp_path)
    monkeypatch.setenv("FAKE_ENGINE_BRAIN", "whole-head")
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    result = widget.logic.register(fixed, moving, movingBrainMask=True)
    assert result.brain_mask.GetName() == "T1 fixed brain mask" and result.moving_brain_mask.GetName() == "T1 moving brain mask"
    assert result.nodes()["brain_mask"] is result.brain_mask and result.nodes()["moving_brain_mask"] is result.moving_brain_mask
    for node in (result.brain_mask, result.moving_brain_mask):
        segmentation = node.GetSegmentation()
        assert segmentation.GetNumberOfSegments() == 1 and segmentation.GetNthSegment(0).GetName() == "Brain"
        assert node.GetDisplayNode().GetVisibility2DOutline() and not node.GetDisplayNode().GetVisibility2DFill()
    # showResult: the fixed mask outlined over the fixed volume; the moving one (moving space) hidden in the slice views.
    assert composite.GetBackgroundVolumeID() == fixed.GetID()
    assert result.brain_mask.GetDisplayNode().GetVisibility2D() and not result.moving_brain_mask.GetDisplayNode().GetVisibility2D()
    # Existing nodes are overwritten, not duplicated.
    count = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    again = widget.logic.register(fixed, moving, outputBrainMask=result.brain_mask, outputMovingBrainMask=result.moving_brain_mask)
    assert again.brain_mask is result.brain_mask and again.moving_brain_mask is result.moving_brain_mask
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == count
    # brainMask=False: --brain-mask off, no mask node, and the existing mask node left as it was.
    nodes = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    off = widget.logic.register(fixed, moving, brainMask=False, movingBrainMask=True)
    argv = json.loads((tmp_path / "record.json").read_text())["argv"]
    assert argv[argv.index("--brain-mask") + 1] == "off"
    assert off.brain_mask is None and off.moving_brain_mask is None and not {"brain_mask", "moving_brain_mask"} & set(off.nodes())
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == nodes


def test_a_failing_registration_with_brain_masks_leaves_the_scene_as_it_was(app, monkeypatch, tmp_path):
    from VoxelMorphRegLib.errors import VoxelMorphRegError

    from VoxelMorphRegLib.mrml import volumes

    slicer, widget = app["slicer"], app["widget"]
    scene = slicer.mrmlScene
    fixed = _volume(slicer, "fixed", 1)
    image = sitk.GetImageFromArray(np.random.default_rng(2).random((9, 13, 12)).astype(np.float32))  # another grid than the fixed one's
    moving = volumes.sitk_to_volume(image, scene=scene, name="moving")
    _fake_engine(monkeypatch, tmp_path, mode="fail")
    monkeypatch.setenv("FAKE_ENGINE_BRAIN", "whole-head")
    names = lambda: sorted(scene.GetNthNode(i).GetName() or "" for i in range(scene.GetNumberOfNodes()))  # noqa: E731
    count, before = scene.GetNumberOfNodes(), names()
    with pytest.raises(VoxelMorphRegError, match="no such file"):
        widget.logic.register(fixed, moving, movingBrainMask=True)
    assert scene.GetNumberOfNodes() == count and names() == before
    monkeypatch.setenv("FAKE_ENGINE_MODE", "ok")
    monkeypatch.setenv("FAKE_ENGINE_BRAIN", "bad-grid")  # the fixed mask on the wrong grid: the import fails as a whole
    with pytest.raises(VoxelMorphRegError, match="brain_mask"):
        widget.logic.register(fixed, moving, inverseTransform=True, movingBrainMask=True)
    assert scene.GetNumberOfNodes() == count and names() == before
