"""Every Slicer API that VoxelMorphReg.py, VoxelMorphRegWidgets and VoxelMorphRegLib/mrml call, with the first Slicer version that has it.

The module supports Slicer 5.6 to 5.10 (README, CMakeLists.txt). The table below was filled by reading
Slicer's source at the tags v5.0.0, v5.2.0, v5.4.0, v5.6.0, v5.6.2, v5.8.0, v5.8.1 and v5.10.0 (the
class's header and its base classes' headers for C++ classes, ``Base/Python/slicer`` for the Python
API): "5.0.0" means "there in every 5.x". The tests fail when

* the code calls a method (a CamelCase attribute: VTK and MRML style), a ``slicer.util`` function or
  a parameter node wrapper method that is in neither the table nor the list of non-Slicer names
  (then look it up in Slicer's source and add it, with its first version);
* the code calls something that the oldest supported version (5.6.0) lacks, or calls
  ``FitSliceToBackground()`` without arguments (defaults only from 5.8.0);
* slicer-core (the MRML wheel the other tests run on) lacks a table entry of an MRML class.

Found this way (issue 12): ``vtkMRMLTableNode.SetUseColumnTitleAsColumnHeader`` is 5.6.2+,
``vtkSegment.Get/SetTerminology`` 5.10.0+; ``connectGui`` returns its tag only from 5.10.0 (a
behaviour, not a name: see test_slicer_module_panel.py).
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FILES = [ROOT / "VoxelMorphReg.py"] + sorted((ROOT / "VoxelMorphRegWidgets").glob("*.py")) + sorted((ROOT / "VoxelMorphRegLib" / "mrml").glob("*.py"))
OLDEST_SUPPORTED = (5, 6, 0)

# "Class.member": first Slicer version that has it (read from Slicer's source, see the docstring).
SLICER_API = {
    "vtkMRMLScene.AddNewNodeByClass": "5.0.0",
    "vtkMRMLScene.AddNode": "5.0.0",
    "vtkMRMLScene.Clear": "5.0.0",
    "vtkMRMLScene.GenerateUniqueName": "5.0.0",
    "vtkMRMLScene.GetNodeByID": "5.0.0",
    "vtkMRMLScene.GetNthNodeByClass": "5.0.0",
    "vtkMRMLScene.GetNthNode": "5.0.0",  # outputs.py: the nodes a failed import added are removed (read at v5.6.0, v5.8.1, v5.10.0)
    "vtkMRMLScene.GetNumberOfNodes": "5.0.0",
    "vtkMRMLScene.GetNumberOfNodesByClass": "5.0.0",
    "vtkMRMLScene.IsNodePresent": "5.0.0",
    "vtkMRMLScene.RemoveNode": "5.0.0",
    "vtkMRMLScene.StartCloseEvent": "5.0.0",
    "vtkMRMLScene.EndCloseEvent": "5.0.0",
    "vtkMRMLScene.NodeAddedEvent": "5.0.0",
    "vtkMRMLScene.GetFirstNodeByName": "5.0.0",
    "vtkMRMLScene.IsImporting": "5.0.0",
    "vtkMRMLScene.IsClosing": "5.0.0",
    "vtkMRMLNode.GetAttribute": "5.0.0",
    "vtkMRMLNode.SetAttribute": "5.0.0",
    "vtkMRMLNode.GetID": "5.0.0",
    "vtkMRMLNode.GetName": "5.0.0",
    "vtkMRMLNode.SetName": "5.0.0",
    "vtkMRMLNode.GetScene": "5.0.0",
    "vtkMRMLNode.GetNodeReference": "5.0.0",
    "vtkMRMLDisplayableNode.CreateDefaultDisplayNodes": "5.0.0",
    "vtkMRMLDisplayableNode.GetDisplayNode": "5.0.0",
    "vtkMRMLTransformableNode.GetParentTransformNode": "5.0.0",
    "vtkMRMLTransformableNode.SetAndObserveTransformNodeID": "5.0.0",
    "vtkMRMLTransformNode.GetMatrixTransformToWorld": "5.0.0",
    "vtkMRMLTransformNode.IsTransformToWorldLinear": "5.0.0",
    "vtkMRMLTransformNode.GetTransformFromParent": "5.0.0",
    "vtkMRMLTransformNode.SetAndObserveTransformFromParent": "5.0.0",
    "vtkMRMLVolumeNode.GetIJKToRASMatrix": "5.0.0",
    "vtkMRMLVolumeNode.SetIJKToRASMatrix": "5.0.0",
    "vtkMRMLVolumeNode.GetImageData": "5.0.0",
    "vtkMRMLVolumeNode.SetAndObserveImageData": "5.0.0",
    "vtkMRMLVolumeNode.SetSpacing": "5.0.0",
    "vtkMRMLSegmentationNode.GetSegmentation": "5.0.0",
    "vtkMRMLSegmentationNode.SetReferenceImageGeometryParameterFromVolumeNode": "5.0.0",
    "vtkSegmentation.AddSegment": "5.0.0",
    "vtkSegmentation.ContainsRepresentation": "5.0.0",
    "vtkSegmentation.CreateRepresentation": "5.0.0",
    "vtkSegmentation.DeepCopy": "5.0.0",
    "vtkSegmentation.GetNthSegment": "5.0.0",
    "vtkSegmentation.GetNthSegmentID": "5.0.0",
    "vtkSegmentation.GetNumberOfSegments": "5.0.0",
    "vtkSegmentation.GetSegment": "5.0.0",
    "vtkSegmentation.RemoveAllSegments": "5.0.0",
    "vtkSegmentation.SetSourceRepresentationName": "5.4.0",
    "vtkSegmentation.EXTENT_REFERENCE_GEOMETRY": "5.0.0",
    "vtkSegment.AddRepresentation": "5.0.0",
    "vtkSegment.SetColor": "5.0.0",
    "vtkSegment.GetColor": "5.0.0",
    "vtkSegment.SetName": "5.0.0",
    "vtkSegment.GetName": "5.0.0",
    "vtkSegment.SetLabelValue": "5.0.0",
    "vtkSegment.GetTag": "5.0.0",
    "vtkSegment.SetTag": "5.0.0",
    "vtkSegment.GetTerminologyEntryTagName": "5.0.0",
    "vtkOrientedImageData.SetGeometryFromImageToWorldMatrix": "5.0.0",
    "vtkSegmentationConverterFactory.GetInstance": "5.0.0",
    "vtkSegmentationConverterFactory.ConstructRepresentationObjectByRepresentation": "5.0.0",
    "vtkSegmentationConverterFactory.RegisterConverterRule": "5.0.0",
    "vtkSlicerSegmentationsModuleLogic.GenerateMergedLabelmapInReferenceGeometry": "5.0.0",
    "vtkMRMLSliceCompositeNode.GetBackgroundVolumeID": "5.0.0",
    "vtkMRMLSliceCompositeNode.SetBackgroundVolumeID": "5.0.0",
    "vtkMRMLSliceCompositeNode.GetForegroundOpacity": "5.0.0",
    "vtkMRMLSliceCompositeNode.SetForegroundOpacity": "5.0.0",
    "vtkMRMLSliceCompositeNode.GetForegroundVolumeID": "5.0.0",
    "vtkMRMLSliceCompositeNode.SetForegroundVolumeID": "5.0.0",
    "vtkMRMLSliceLogic.FitSliceToAll": "5.0.0",
    "vtkMRMLSliceLogic.GetSliceNode": "5.0.0",
    "vtkMRMLScalarVolumeDisplayNode.GetAutoWindowLevel": "5.0.0",
    "vtkMRMLScalarVolumeDisplayNode.SetAutoWindowLevel": "5.0.0",
    "vtkMRMLScalarVolumeDisplayNode.GetLevel": "5.0.0",
    "vtkMRMLScalarVolumeDisplayNode.GetWindow": "5.0.0",
    "vtkMRMLScalarVolumeDisplayNode.SetWindowLevel": "5.0.0",
    "vtkMRMLScalarVolumeDisplayNode.SetWindowLevelMinMax": "5.0.0",
    "vtkMRMLColorNode.GetColor": "5.0.0",
    "vtkMRMLColorNode.GetColorName": "5.0.0",
    "vtkMRMLColorNode.GetNumberOfColors": "5.0.0",
    "vtkMRMLDisplayNode.GetColorNode": "5.0.0",
    "vtkMRMLDisplayNode.SetVisibility": "5.0.0",
    "vtkMRMLDisplayNode.SetVisibility2D": "5.0.0",
    "vtkMRMLDisplayNode.SetSliceIntersectionThickness": "5.0.0",
    "vtkMRMLSegmentationDisplayNode.GetVisibility2DFill": "5.0.0",
    "vtkMRMLSegmentationDisplayNode.GetVisibility2DOutline": "5.0.0",
    "vtkMRMLSegmentationDisplayNode.SetVisibility2DFill": "5.0.0",
    "vtkMRMLSegmentationDisplayNode.SetVisibility2DOutline": "5.0.0",
    "vtkMRMLTableNode.GetColumnDescription": "5.0.0",
    "vtkMRMLTableNode.SetColumnDescription": "5.0.0",
    "vtkMRMLTableNode.GetColumnName": "5.0.0",
    "vtkMRMLTableNode.GetNumberOfColumns": "5.0.0",
    "vtkMRMLTableNode.GetTable": "5.0.0",
    "vtkMRMLTableNode.SetAndObserveTable": "5.0.0",
    "vtkMRMLTableNode.SetLocked": "5.0.0",
    "vtkMRMLTableNode.GetNumberOfRows": "5.0.0",
    "vtkMRMLPlotSeriesNode.SetAndObserveTableNodeID": "5.0.0",
    "vtkMRMLPlotSeriesNode.SetColor": "5.0.0",
    "vtkMRMLPlotSeriesNode.SetLineStyle": "5.0.0",
    "vtkMRMLPlotSeriesNode.SetMarkerStyle": "5.0.0",
    "vtkMRMLPlotSeriesNode.SetPlotType": "5.0.0",
    "vtkMRMLPlotSeriesNode.SetXColumnName": "5.0.0",
    "vtkMRMLPlotSeriesNode.SetYColumnName": "5.0.0",
    "vtkMRMLPlotSeriesNode.LineStyleSolid": "5.0.0",
    "vtkMRMLPlotSeriesNode.MarkerStyleCircle": "5.0.0",
    "vtkMRMLPlotSeriesNode.MarkerStyleNone": "5.0.0",
    "vtkMRMLPlotSeriesNode.PlotTypeScatter": "5.0.0",
    "vtkMRMLPlotSeriesNode.GetTableNode": "5.0.0",
    "vtkMRMLPlotChartNode.AddAndObservePlotSeriesNodeID": "5.0.0",
    "vtkMRMLPlotChartNode.SetTitle": "5.0.0",
    "vtkMRMLPlotChartNode.SetXAxisTitle": "5.0.0",
    "vtkMRMLPlotChartNode.SetYAxisTitle": "5.0.0",
    "vtkMRMLPlotChartNode.SetLegendVisibility": "5.0.0",
    "vtkMRMLPlotViewNode.GetPlotChartNodeID": "5.0.0",
    "vtkSlicerPlotsLogic.ShowChartInLayout": "5.0.0",
    "vtkMRMLScriptedModuleNode.SetParameter": "5.0.0",
    "vtkMRMLScriptedModuleNode.GetParameter": "5.0.0",
    "qSlicerCoreApplication.temporaryPath": "5.0.0",
    "qSlicerCoreApplication.testingEnabled": "5.0.0",
    "qSlicerApplication.layoutManager": "5.0.0",
    "qSlicerLayoutManager.mrmlSliceLogics": "5.0.0",
    "qSlicerLayoutManager.plotWidget": "5.0.0",
    "qSlicerLayoutManager.sliceWidget": "5.0.0",
    "slicer.util.NodeModify": "5.0.0",
    "slicer.util.arrayFromVTKMatrix": "5.0.0",
    "slicer.util.vtkMatrixFromArray": "5.0.0",
    "slicer.util.WaitCursor": "5.0.0",
    "slicer.util.addVolumeFromArray": "5.0.0",
    "slicer.util.arrayFromVolume": "5.0.0",
    "slicer.util.childWidgetVariables": "5.0.0",
    "slicer.util.confirmOkCancelDisplay": "5.0.0",
    "slicer.util.errorDisplay": "5.0.0",
    "slicer.util.getNodesByClass": "5.0.0",
    "slicer.util.loadUI": "5.0.0",
    "slicer.util.pip_install": "5.0.0",
    "slicer.util.selectModule": "5.0.0",
    "slicer.util.updateVolumeFromArray": "5.0.0",
    "slicer.util.getModuleLogic": "5.0.0",
    "slicer.util.delayDisplay": "5.0.0",
    "slicer.util.getNode": "5.0.0",
    "parameterNodeWrapper.connectParametersToGui": "5.4.0",
    "parameterNodeWrapper.disconnectGui": "5.4.0",
    "parameterNodeWrapper.Choice": "5.4.0",
    "parameterNodeWrapper.WithinRange": "5.4.0",
    "parameterNodeWrapper.Optional": "5.4.0",
    "slicer.i18n.tr": "5.4.0",
    "slicer.i18n.translate": "5.4.0",
    # The scripted-module helpers the widget shell and the panels call (Base/Python/slicer/util.py,
    # ScriptedLoadableModule.py) and the checkable node combo box of the Train panel
    # (Libs/MRML/Widgets/qMRMLCheckableNodeComboBox.h); checked at v5.0.0, v5.6.0, v5.8.1 and v5.10.0.
    "VTKObservationMixin.addObserver": "5.0.0",
    "VTKObservationMixin.hasObserver": "5.0.0",
    "VTKObservationMixin.removeObserver": "5.0.0",
    "VTKObservationMixin.removeObservers": "5.0.0",
    "ScriptedLoadableModuleWidget.resourcePath": "5.0.0",
    "qMRMLCheckableNodeComboBox.checkedNodes": "5.0.0",
    "qMRMLCheckableNodeComboBox.setCheckState": "5.0.0",
    "SampleData.downloadSample": "5.0.0",
    "ScriptedLoadableModule.ScriptedLoadableModuleTest": "5.0.0",
    # vtkAddon (built with every Slicer 5): checked in slicer-core only.
    "vtkOrientedGridTransform.GetGridDirectionMatrix": "5.0.0",
    "vtkOrientedGridTransform.SetGridDirectionMatrix": "5.0.0",
    # The PyTorch extension (PyTorchUtils/PyTorchUtils.py): installTorch(askConfirmation, forceComputationBackend, torchVersionRequirement, ...).
    "PyTorchUtils.PyTorchUtilsLogic": "5.0.0",
    # Newer than the oldest supported version: the code must not call these.
    "vtkMRMLTableNode.SetUseColumnTitleAsColumnHeader": "5.6.2",
    "vtkMRMLTableNode.SetUseColumnNameAsColumnHeader": "5.0.0",  # deprecated from 5.6.2 on
    "vtkSegment.SetTerminology": "5.10.0",
    "vtkSegment.GetTerminology": "5.10.0",
    "vtkSegment.HasTerminology": "5.10.0",
}

# CamelCase names the code uses that are not Slicer's: VTK, SimpleITK, Python, Qt, this project.
NOT_SLICER = {
    "VTK": """AddColumn AllocateScalars GetClassName GetColumn GetColumnByName GetData GetDimensions GetDisplacementGrid
              GetDisplacementScale GetDisplacementShift GetElement GetInverseFlag GetItemAsObject GetNumberOfItems
              GetNumberOfScalarComponents GetPointData GetScalars GetValue InsertNextValue IsA Modified ModifiedEvent SetData
              SetDimensions SetDisplacementGridData SetElement SetInterpolationModeToCubic SetNumberOfComponents
              SetNumberOfTuples SetScalars ToDouble ToString TransformPoints Update VTK_DOUBLE VTK_OBJECT""",
    "SimpleITK": """GetArrayFromImage GetArrayViewFromImage GetImageFromArray GetNumberOfComponentsPerPixel GetPixelID GetSize
                    GetDimension GetOrigin GetSpacing GetDirection SetOrigin SetDirection Image ReadImage Resample Transform WriteImage""",
    "Python": "CREATE_NEW_PROCESS_GROUP DEVNULL Empty PIPE P_PID PackageNotFoundError Popen Queue SIGKILL STDOUT Thread WEXITED WNOHANG WNOWAIT T SkipTest",
    "Qt (PythonQt)": "Checked QFileDialog QTimer Qt ToolTipRole",
    "this project": "MINIMUM_TORCH TrainingRunner NEEDS_ENGINE",
}
NOT_SLICER_NAMES = {name for names in NOT_SLICER.values() for name in names.split()}
# Lower-case Slicer APIs: slicer.util functions, the parameter node wrapper's methods, the application's.
LOWER_CASE_CALLS = {
    "slicer.util": re.compile(r"slicer\.util\.(\w+)"),
    "parameterNodeWrapper": re.compile(r"\.(connectParametersToGui|disconnectGui|connectGui)\("),
    "qSlicerApplication": re.compile(r"slicer\.app\.(layoutManager)\b"),
    "qSlicerCoreApplication": re.compile(r"slicer\.app\.(testingEnabled|temporaryPath)\b"),
    "qSlicerLayoutManager": re.compile(r"layoutManager\(\)\.(\w+)\("),
    "slicer.i18n": re.compile(r"from slicer\.i18n import (\w+)"),
    "VTKObservationMixin": re.compile(r"self\.(addObserver|hasObserver|removeObserver|removeObservers)\("),
    "ScriptedLoadableModuleWidget": re.compile(r"self\.(resourcePath)\("),
    "qMRMLCheckableNodeComboBox": re.compile(r"Selector\.(checkedNodes|setCheckState)\("),
}


def version(text):
    return tuple(int(v) for v in text.split("."))


def camel_case_attributes():
    """``{name: [file:line, ...]}`` of every CamelCase attribute the module and the bridge use."""
    found = {}
    for path in FILES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and re.match(r"^[A-Z][A-Za-z0-9_]*$", node.attr):
                found.setdefault(node.attr, []).append(f"{path.name}:{node.lineno}")
    return found


def members(table=SLICER_API):
    return {key.rsplit(".", 1)[1] for key in table}


def test_every_slicer_call_is_in_the_table():
    unknown = {name: where for name, where in camel_case_attributes().items() if name not in members() and name not in NOT_SLICER_NAMES}
    assert not unknown, f"look these up in Slicer's source (first version that has them) and add them to SLICER_API: {unknown}"
    for family, pattern in LOWER_CASE_CALLS.items():
        for path in FILES:
            for name in pattern.findall(path.read_text(encoding="utf-8")):
                assert f"{family}.{name}" in SLICER_API or (family == "parameterNodeWrapper" and name == "connectGui"), f"{path.name}: {family}.{name} is not in SLICER_API"


def test_nothing_newer_than_the_oldest_supported_slicer_is_called():
    too_new = {key for key, first in SLICER_API.items() if version(first) > OLDEST_SUPPORTED}
    used = camel_case_attributes()
    called = {key: used[key.rsplit(".", 1)[1]] for key in too_new if key.rsplit(".", 1)[1] in used}
    assert not called, f"not in Slicer {'.'.join(map(str, OLDEST_SUPPORTED))}: {called}"
    for path in FILES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "FitSliceToBackground":
                assert node.args, f"{path.name}:{node.lineno}: FitSliceToBackground() needs width and height before Slicer 5.8.0"
    # connectGui returns None before 5.10: its result must not be the tag that disconnects.
    for path in FILES:
        assert not re.search(r"=\s*[\w.]*connectGui\(", path.read_text(encoding="utf-8")), f"{path.name}: connectGui's return value is None before Slicer 5.10"


def test_the_table_names_the_known_traps():
    assert SLICER_API["vtkMRMLTableNode.SetUseColumnTitleAsColumnHeader"] == "5.6.2"
    assert SLICER_API["vtkMRMLTableNode.SetUseColumnNameAsColumnHeader"] == "5.0.0"
    assert SLICER_API["vtkSegment.GetTag"] == SLICER_API["vtkSegment.SetTag"] == "5.0.0"
    assert SLICER_API["vtkMRMLSliceLogic.FitSliceToAll"] == "5.0.0"


MRML_CLASSES = lambda: sorted({key.split(".")[0] for key in SLICER_API if key.startswith("vtk")})  # noqa: E731


@pytest.mark.parametrize("class_name", MRML_CLASSES())
def test_slicer_core_has_the_table_entries(class_name):
    from conftest import require_slicer_core

    slicer = require_slicer_core()
    cls = getattr(slicer, class_name, None)
    if cls is None:
        pytest.skip(f"{class_name} is not in slicer-core (an application module's class)")
    missing = [key for key in SLICER_API if key.startswith(class_name + ".") and not hasattr(cls, key.split(".", 1)[1])]
    assert not missing


def test_slicer_core_has_the_util_functions():
    from conftest import require_slicer_core

    require_slicer_core()
    import slicer.util

    names = [key.split(".", 2)[2] for key in SLICER_API if key.startswith("slicer.util.")]
    assert names and not [n for n in names if not hasattr(slicer.util, n)]
