"""Drive the VoxelMorphReg panel end to end inside a real Slicer, on Slicer's sample data (MRHead).

A maintainer runs this before a release, once per supported Slicer version (5.6, 5.8, 5.10):

    Slicer --additional-module-paths /path/to/SlicerVoxelMorphReg --python-script /path/to/SlicerVoxelMorphReg/Testing/Slicer/run_in_slicer.py

(with the extension installed from the Extensions Manager, leave out ``--additional-module-paths``).
It needs the network once: MRHead comes from Slicer's sample data, and PyTorch (through the PyTorch
extension, which must be installed) and MONAI are installed if missing. Options after the script
name: ``--quick`` (no per-pair refinement: the network only), ``--no-train`` (skip the Train
panel), ``--keep-open`` (do not quit Slicer at the end).

What it does, as a user would, through the panel's widgets: registers MRHead onto a moved copy
of itself, checks the outputs, the views and that the images match better than before; leaves
the module and comes back (the device choice must stay); cancels a run (the scene must stay as
it was); loads a displacement field written by the engine's NIfTI writer through Slicer's own
reader (no intent-code warning, same transform); trains a few steps on small synthetic
volumes and stops a training through the panel (the engine, behind Slicer's PythonSlicer
launcher, must save last.pt). It prints one line, ``VOXELMORPHREG IN-SLICER CHECK: PASS ...`` or
``... FAIL ...`` with the failed checks, and quits with exit code 0 or 1.
"""

import math
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import vtk

import slicer

RESULTS = []  # (check, passed, detail)


def check(name, passed, detail=""):
    RESULTS.append((name, bool(passed), str(detail)))
    print(f"[{'ok' if passed else 'FAILED'}] {name}" + (f": {detail}" if detail else ""), flush=True)
    return bool(passed)


def wait_until(condition, timeout_s, what):
    start = time.time()
    while not condition():
        slicer.app.processEvents()
        time.sleep(0.05)
        if time.time() - start > timeout_s:
            raise TimeoutError(f"{what} did not happen within {timeout_s} s")
    return time.time() - start


def correlation(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))


def moved_copy(volume):
    """MRHead moved by a known rigid transform (6 degrees about S, a few mm), hardened into its geometry."""
    moving = slicer.modules.volumes.logic().CloneVolume(slicer.mrmlScene, volume, "MRHead moved")
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "known motion")
    matrix = vtk.vtkMatrix4x4()
    angle = math.radians(6.0)
    for r, row in enumerate(((math.cos(angle), -math.sin(angle), 0.0, 4.0), (math.sin(angle), math.cos(angle), 0.0, -3.0), (0.0, 0.0, 1.0, 2.0))):
        for c, value in enumerate(row):
            matrix.SetElement(r, c, value)
    transform.SetMatrixTransformToParent(matrix)
    moving.SetAndObserveTransformNodeID(transform.GetID())
    moving.HardenTransform()
    slicer.mrmlScene.RemoveNode(transform)
    return moving


def register_through_panel(widget, fixed, moving, quick):
    ui, p = widget.ui, widget._parameterNode
    ui.fixedVolumeSelector.setCurrentNode(fixed)
    ui.movingVolumeSelector.setCurrentNode(moving)
    ui.deviceComboBox.currentIndex = ui.deviceComboBox.findText("cpu")
    if quick:
        ui.refineIterationsDefaultCheckBox.checked = False
        ui.refineIterationsSpinBox.value = 0
    check("panel: fixed, moving, device and refinement reach the parameter node",
          p.fixedVolume is fixed and p.movingVolume is moving and p.device == "cpu" and (p.refineIterations == 0 if quick else p.refineIterations is None),
          f"device={p.device}, refineIterations={p.refineIterations}")
    # Leave the module and come back: Slicer 5.6 and 5.8 piled up connectors here, resetting combo boxes.
    for _ in range(2):
        slicer.util.selectModule("Data")
        slicer.util.selectModule("VoxelMorphReg")
    check("leaving and re-entering the module keeps the device choice", widget._parameterNode.device == "cpu" and ui.deviceComboBox.currentText == "cpu", ui.deviceComboBox.currentText)
    nodes = slicer.mrmlScene.GetNumberOfNodes()
    ui.registerButton.click()
    check("Register turns into Cancel while the engine runs", ui.registerButton.text == "Cancel" and not ui.inputsCollapsibleButton.enabled, ui.registerButton.text)
    seconds = wait_until(lambda: not widget.registerPanel.running, 1800, "the registration")
    runner = widget._runner
    check("the registration succeeds", runner.state == "succeeded", runner.error or f"{seconds:.0f} s")
    check("the panel is usable again", ui.registerButton.text == "Register" and ui.registerButton.enabled and ui.inputsCollapsibleButton.enabled, ui.statusLabel.text)
    check("the status says done", ui.statusLabel.text.startswith("Done"), ui.statusLabel.text)
    check("new nodes were added", slicer.mrmlScene.GetNumberOfNodes() > nodes)
    return runner


def check_result(runner, fixed, moving):
    result = runner.result
    warped = result.warped_volume
    a, b = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    warped.GetIJKToRASMatrix(a)
    fixed.GetIJKToRASMatrix(b)
    same = all(abs(a.GetElement(r, c) - b.GetElement(r, c)) < 1e-6 for r in range(4) for c in range(4))
    check("the warped volume is on the fixed grid", same and warped.GetImageData().GetDimensions() == fixed.GetImageData().GetDimensions())
    check("the transform is a grid transform (TransformFromParent)", result.transform.IsA("vtkMRMLGridTransformNode") and result.transform.GetTransformFromParent().IsA("vtkOrientedGridTransform"))
    check("the Jacobian and the metrics table are there", result.jacobian is not None and result.table is not None)
    composite = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceCompositeNode()
    check("the views show fixed behind, warped in front", composite.GetBackgroundVolumeID() == fixed.GetID() and composite.GetForegroundVolumeID() == warped.GetID(),
          f"background {composite.GetBackgroundVolumeID()}, foreground {composite.GetForegroundVolumeID()}")
    unregistered = slicer.modules.volumes.logic().ResampleVolumeToReferenceVolume(moving, fixed)
    fixed_array = slicer.util.arrayFromVolume(fixed)
    before = correlation(fixed_array, slicer.util.arrayFromVolume(unregistered))
    after = correlation(fixed_array, slicer.util.arrayFromVolume(warped))
    slicer.mrmlScene.RemoveNode(unregistered)
    check("the warped volume matches the fixed one better than the moving one did", after > before and after > 0.9, f"correlation {before:.3f} -> {after:.3f}")
    # MRHead is a whole head: with the Brain mask check box on (the default) the fixed brain mask comes back
    mask = getattr(result, "brain_mask", None)
    volume_ml, voxels = 0.0, 0
    if mask is not None and mask.GetSegmentation().GetNumberOfSegments():
        from vtk.util import numpy_support

        labelmap = mask.GetSegmentation().GetNthSegment(0).GetRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
        if labelmap is not None and labelmap.GetPointData().GetScalars() is not None:
            voxels = int((numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()) > 0).sum())
            spacing = labelmap.GetSpacing()
            volume_ml = voxels * spacing[0] * spacing[1] * spacing[2] / 1000.0
    check("the fixed brain mask comes back as an outlined segmentation", mask is not None and voxels > 0
          and mask.GetDisplayNode().GetVisibility2DOutline() and not mask.GetDisplayNode().GetVisibility2DFill(), f"{volume_ml:.0f} mL")
    check("the fixed brain mask has a brain's volume (800 to 2200 mL)", 800 < volume_ml < 2200, f"{volume_ml:.0f} mL")
    return result


def check_cancel(widget):
    ui = widget.ui
    nodes = slicer.mrmlScene.GetNumberOfNodes()
    ui.registerButton.click()
    wait_until(lambda: widget._runner is not None and widget._runner.progress > 0, 300, "the engine's first progress")
    runner = widget._runner
    ui.registerButton.click()  # Cancel
    wait_until(lambda: not widget.registerPanel.running, 60, "the cancel")
    check("Cancel stops the run and leaves the scene as it was", runner.state == "cancelled" and slicer.mrmlScene.GetNumberOfNodes() == nodes, f"{runner.state}, {slicer.mrmlScene.GetNumberOfNodes() - nodes} nodes more")
    check("the panel says cancelled and is usable", ui.registerButton.text == "Register" and ui.statusLabel.text.startswith("Cancelled"), ui.statusLabel.text)


def check_displacement_file(result, fixed):
    """The engine's NIfTI displacement writer, read back by Slicer's own transform reader."""
    from VoxelMorphRegLib.image.io import write_nifti_displacement
    from VoxelMorphRegLib.mrml import transforms, volumes

    folder = Path(tempfile.mkdtemp(prefix="VoxelMorphReg-check-", dir=slicer.app.temporaryPath))
    field = transforms.displacement_from_transform_node(result.transform, volumes.ijk_to_ras(fixed), volumes.volume_size(fixed))
    path = write_nifti_displacement(field, folder / "displacement.nii.gz")
    loaded = slicer.util.loadTransform(str(path))
    messages = loaded.GetStorageNode().GetUserMessages() if loaded is not None and loaded.GetStorageNode() is not None else None
    texts = [messages.GetNthMessageText(i) for i in range(messages.GetNumberOfMessages())] if messages is not None else []
    check("Slicer reads displacement.nii.gz without an intent-code warning", loaded is not None and not [t for t in texts if "ntent code" in t], "; ".join(texts))
    if loaded is not None:
        bounds = [0.0] * 6
        fixed.GetRASBounds(bounds)
        centre = [(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2]
        points = [centre, [centre[0] + 20, centre[1] - 15, centre[2] + 10]]
        differences = [max(abs(x - y) for x, y in zip(loaded.GetTransformFromParent().TransformPoint(q), result.transform.GetTransformFromParent().TransformPoint(q))) for q in points]
        check("the file holds the same transform as the node", max(differences) < 0.05, f"largest difference {max(differences):.4f} mm")
        slicer.mrmlScene.RemoveNode(loaded)


def check_training(widget, module):
    """The module's own training test (a few steps through the Train panel), then a stop through the panel."""
    test = module.VoxelMorphRegTest()
    test.setUp = lambda: None
    try:
        test.test_TrainThroughWidget()
        check("training through the Train panel (the module's own test)", True)
    except Exception as exc:
        check("training through the Train panel (the module's own test)", False, f"{type(exc).__name__}: {exc}")
    ui, p = widget.ui, widget._parameterNode
    p.trainSteps, p.trainValidateEvery = 100000, 1000
    out = Path(slicer.app.temporaryPath) / "VoxelMorphReg-check-stop"
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    ui.trainOutputPathLineEdit.currentPath = str(out)
    ui.trainButton.click()
    runner = widget._trainRunner
    wait_until(lambda: runner.step >= 3 or not runner.running, 600, "three training steps")
    ui.trainButton.click()  # Stop training
    check("Stop training says the engine saves last.pt", ui.trainButton.text == "Kill training", ui.trainButton.text)
    wait_until(lambda: not runner.running, 120, "the stop")
    killed = any("killed" in line for line in runner.log)
    check("the stopped engine saved last.pt itself (through the PythonSlicer launcher)", runner.state == "stopped" and (out / "last.pt").exists() and not killed,
          f"{runner.state}, last.pt {'there' if (out / 'last.pt').exists() else 'missing'}, {'killed' if killed else 'not killed'}")
    check("the stopped model is offered in the model list", runner.checkpoint is not None and str(runner.checkpoint) in widget._parameterNode.userModels, str(runner.checkpoint))


def run(options):
    version = f"{slicer.app.majorVersion}.{slicer.app.minorVersion}"
    check(f"Slicer {version} is a supported version (5.6 to 5.10)", (5, 6) <= (slicer.app.majorVersion, slicer.app.minorVersion) <= (5, 10), slicer.app.applicationVersion)
    loaded = hasattr(slicer.modules, "voxelmorphreg")
    if not check("the VoxelMorphReg module is loaded", loaded, "" if loaded else "start Slicer with --additional-module-paths /path/to/SlicerVoxelMorphReg"):
        return
    slicer.util.selectModule("VoxelMorphReg")
    widget = slicer.modules.voxelmorphreg.widgetRepresentation().self()
    module = sys.modules[type(widget).__module__]
    logic = widget.logic
    try:
        logic.installDependencies(askConfirmation=False)
    except Exception as exc:
        check("PyTorch and MONAI are installed and fit", False, exc)
        return
    check("PyTorch and MONAI are installed and fit", not logic.dependencyProblems(), "; ".join(logic.dependencyProblems()))
    widget.startDeviceProbe()
    wait_until(lambda: widget.ui.deviceStatusLabel.text not in ("checking...",), 180, "the device check")
    check("the device label says what torch sees", widget.ui.deviceStatusLabel.text.startswith(("CUDA", "CPU only")), widget.ui.deviceStatusLabel.text)

    import SampleData

    fixed = SampleData.downloadSample("MRHead")
    if not check("MRHead sample data loaded", fixed is not None):
        return
    moving = moved_copy(fixed)
    runner = register_through_panel(widget, fixed, moving, options["quick"])
    if runner.state == "succeeded":
        result = check_result(runner, fixed, moving)
        check_displacement_file(result, fixed)
        check_cancel(widget)
    if not options["no_train"]:
        check_training(widget, module)


def main(argv):
    options = {"quick": "--quick" in argv, "no_train": "--no-train" in argv, "keep_open": "--keep-open" in argv}
    started = time.time()
    try:
        run(options)
    except Exception as exc:
        traceback.print_exc()
        check("the check ran to its end", False, f"{type(exc).__name__}: {exc}")
    failed = [name for name, passed, _ in RESULTS if not passed]
    version = getattr(slicer.app, "applicationVersion", "?")
    summary = f"Slicer {version}, {len(RESULTS)} checks, {time.time() - started:.0f} s"
    if failed:
        print(f"VOXELMORPHREG IN-SLICER CHECK: FAIL ({summary}): " + "; ".join(failed), flush=True)
    else:
        print(f"VOXELMORPHREG IN-SLICER CHECK: PASS ({summary})", flush=True)
    if not options["keep_open"]:
        slicer.util.exit(1 if failed else 0)


main(sys.argv[1:])
