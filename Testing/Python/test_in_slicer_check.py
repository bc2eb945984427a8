"""The maintainer's in-Slicer check (Testing/Slicer/run_in_slicer.py) run here on the application stand-ins.

It cannot replace running it in a real Slicer, but its plumbing is exercised: the panel driven
through its widgets, module switching, the runner with the fake engine, the views, Cancel, the
displacement file read back by Slicer's own transform storage node, and the PASS/FAIL line and
exit code. With the fake engine the warped image is not a real registration, so that one check
(the correlation gain) is expected to fail, and so is the brain mask's volume (the fake engine's
mask of a small phantom); they are the only ones that may.
"""

import sys
import types

import pytest
from conftest import ROOT, blob_volume, require_slicer_core

require_slicer_core()
sitk = pytest.importorskip("SimpleITK")

import slicer_app_fakes  # noqa: E402
from test_slicer_module_panel import _fake_engine, _instant_device_probe  # noqa: E402

SCRIPT = ROOT / "Testing" / "Slicer" / "run_in_slicer.py"


class _Layout:
    """What the script and the module ask of the layout manager: slice logics and the Red composite node."""

    def __init__(self, slicer):
        scene = slicer.mrmlScene
        self.logics, self.composites = [], {}
        for name in ("Red", "Yellow", "Green"):
            slice_node = slicer.vtkMRMLSliceNode()
            slice_node.SetName(name)
            slice_node.SetLayoutName(name)
            slice_node.SetDimensions(256, 256, 1)
            scene.AddNode(slice_node)
            composite = slicer.vtkMRMLSliceCompositeNode()
            composite.SetLayoutName(name)
            scene.AddNode(composite)
            logic = slicer.vtkMRMLSliceLogic()
            logic.SetMRMLScene(scene)
            logic.SetSliceNode(slice_node)
            self.logics.append(logic)
            self.composites[name] = composite

    def mrmlSliceLogics(self):
        import vtk

        collection = vtk.vtkCollection()
        for logic in self.logics:
            collection.AddItem(logic)
        return collection

    def sliceWidget(self, name):
        return types.SimpleNamespace(mrmlSliceCompositeNode=lambda: self.composites[name])


class _PlotsLogic:
    """slicer.modules.plots.logic(): ShowChartInLayout puts the chart in the layout's plot view."""

    def __init__(self, view):
        self.view = view

    def ShowChartInLayout(self, chart):
        self.view.SetPlotChartNodeID(chart.GetID())


def _fake_training_engine(monkeypatch, tmp_path):
    """The training runner starts the fake engine of test_mrml_training_runner (real parser, contract events, stdin stop)."""
    from test_mrml_training_runner import FAKE_TRAIN_ENGINE

    from VoxelMorphRegLib.mrml import training_runner

    engine = tmp_path / "fake_train.py"
    engine.write_text(FAKE_TRAIN_ENGINE)
    monkeypatch.setenv("FAKE_TRAIN_MODE", "ok")
    monkeypatch.setenv("FAKE_TRAIN_RECORD", str(tmp_path / "train_record.json"))
    monkeypatch.setattr(training_runner, "default_engine_prefix", lambda python=None: [sys.executable, str(engine)])


@pytest.mark.parametrize("options", [["--no-train"], ["--quick"]], ids=["model-defaults", "quick-with-training"])
def test_the_in_slicer_check_runs_its_checks_and_reports(monkeypatch, tmp_path, capsys, options):
    module, slicer, _ = slicer_app_fakes.install(monkeypatch, tmp_path / "temp", version=(5, 6))
    (tmp_path / "temp").mkdir()
    from VoxelMorphRegLib.mrml import environment, volumes

    monkeypatch.setattr(environment, "missing_packages", lambda names=environment.REQUIRED_PACKAGES: [])
    monkeypatch.setattr(environment, "dependency_problems", lambda: [])

    _instant_device_probe(monkeypatch, environment)
    _fake_engine(monkeypatch, tmp_path)
    monkeypatch.setenv("FAKE_ENGINE_DELAY", "1.5")  # the Cancel check must find the run still going, however fast the machine
    _fake_training_engine(monkeypatch, tmp_path)
    app = slicer.app
    app.majorVersion, app.minorVersion, app.applicationVersion = 5, 6, "5.6.2"
    layout = _Layout(slicer)
    app.layoutManager = lambda: layout
    plot_view = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotViewNode")
    layout.plotWidget = lambda index: types.SimpleNamespace(mrmlPlotViewNode=lambda: plot_view)
    slicer.modules.plots = types.SimpleNamespace(logic=lambda: _PlotsLogic(plot_view))
    widget = module.VoxelMorphRegWidget()
    widget.setup()
    volumes_logic = slicer.vtkSlicerVolumesLogic()
    volumes_logic.SetMRMLScene(slicer.mrmlScene)
    slicer.modules.voxelmorphreg = types.SimpleNamespace(widgetRepresentation=lambda: types.SimpleNamespace(self=lambda: widget))
    slicer.modules.volumes = types.SimpleNamespace(logic=lambda: volumes_logic)

    def select_module(name):  # switching modules: the panel's exit() and enter()
        (widget.enter if name == "VoxelMorphReg" else widget.exit)()

    def load_transform(path):  # Slicer's own transform reader (slicer-core's storage node)
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLGridTransformNode")
        storage = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTransformStorageNode")
        storage.SetFileName(str(path))
        node.SetAndObserveStorageNodeID(storage.GetID())
        return node if storage.ReadData(node) else None

    exits = []
    monkeypatch.setattr(slicer.util, "selectModule", select_module)
    monkeypatch.setattr(slicer.util, "loadTransform", load_transform)
    monkeypatch.setattr(slicer.util, "exit", lambda status=0: exits.append(status))
    head = blob_volume(size=(48, 44, 40), spacing=(1.2, 1.2, 1.5), seed=5)
    monkeypatch.setenv("FAKE_ENGINE_BRAIN", "whole-head")  # MRHead is a whole head: the engine writes the brain masks
    monkeypatch.setitem(sys.modules, "SampleData", types.SimpleNamespace(downloadSample=lambda name: volumes.sitk_to_volume(head, scene=slicer.mrmlScene, name=name)))

    code = SCRIPT.read_text(encoding="utf-8")
    assert code.rstrip().endswith("main(sys.argv[1:])")
    namespace = {"__name__": "run_in_slicer", "__file__": str(SCRIPT)}
    exec(compile(code.rstrip()[: -len("main(sys.argv[1:])")], str(SCRIPT), "exec"), namespace)
    namespace["main"](options)
    results = {name: (passed, detail) for name, passed, detail in namespace["RESULTS"]}
    failed = [name for name, (passed, _) in results.items() if not passed]
    # the fake engine's warp and its whole-head mask (a box in a small phantom) are not a real registration's
    assert failed == ["the warped volume matches the fixed one better than the moving one did", "the fixed brain mask has a brain's volume (800 to 2200 mL)"], {n: results[n] for n in failed}
    assert len(results) >= 18
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("VOXELMORPHREG IN-SLICER CHECK:")]
    assert len(line) == 1 and line[0].startswith("VOXELMORPHREG IN-SLICER CHECK: FAIL (Slicer 5.6.2,") and exits == [1]
    widget.cleanup()
