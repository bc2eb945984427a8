"""Static checks of the Slicer module: compiles, panel matches the code, CMake lists every file.

No Slicer needed: the module script (VoxelMorphReg.py) and its Qt package (VoxelMorphRegWidgets/)
are compiled and parsed, the .ui is read as XML.
"""

import ast
import py_compile
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "VoxelMorphReg.py"
WIDGETS = ROOT / "VoxelMorphRegWidgets"  # the panels and the rest of the Qt code; only the module imports it
MODULE_MAX_LINES = 900  # the module, its parameter node, the widget shell, the logic and the test: readable in one sitting
UI = ROOT / "Resources" / "UI" / "VoxelMorphReg.ui"
CMAKE = ROOT / "CMakeLists.txt"

# Widgets the code relies on, with the class it relies on (methods/signals used in VoxelMorphReg.py and VoxelMorphRegWidgets).
EXPECTED_CLASSES = {
    "fixedVolumeSelector": "qMRMLNodeComboBox",
    "movingVolumeSelector": "qMRMLNodeComboBox",
    "movingSegmentationSelector": "qMRMLNodeComboBox",
    "fixedSegmentationSelector": "qMRMLNodeComboBox",
    "modelComboBox": "QComboBox",
    "addModelButton": "QToolButton",
    "deviceComboBox": "QComboBox",
    "deviceStatusLabel": "QLabel",
    "affineCheckBox": "QCheckBox",
    "refineIterationsSpinBox": "QSpinBox",
    "refineIterationsDefaultCheckBox": "QCheckBox",
    "integrationStepsSpinBox": "QSpinBox",
    "integrationStepsDefaultCheckBox": "QCheckBox",
    "refineSmoothnessSpinBox": "QDoubleSpinBox",
    "refineSmoothnessDefaultCheckBox": "QCheckBox",
    "refineLearningRateSpinBox": "QDoubleSpinBox",
    "refineLearningRateDefaultCheckBox": "QCheckBox",
    "outputVolumeSelector": "qMRMLNodeComboBox",
    "outputTransformSelector": "qMRMLNodeComboBox",
    "inverseTransformCheckBox": "QCheckBox",
    "outputInverseTransformSelector": "qMRMLNodeComboBox",
    "outputSegmentationSelector": "qMRMLNodeComboBox",
    "jacobianCheckBox": "QCheckBox",
    "outputJacobianSelector": "qMRMLNodeComboBox",
    "tableCheckBox": "QCheckBox",
    "outputTableSelector": "qMRMLNodeComboBox",
    "registerButton": "QPushButton",
    "progressBar": "QProgressBar",
    "statusLabel": "QLabel",
    "fadeSlider": "ctkSliderWidget",
    "logTextEdit": "QPlainTextEdit",
    "inputsCollapsibleButton": "ctkCollapsibleButton",
    "settingsCollapsibleButton": "ctkCollapsibleButton",
    "advancedCollapsibleButton": "ctkCollapsibleButton",
    "outputsCollapsibleButton": "ctkCollapsibleButton",
    # Train panel
    "trainCollapsibleButton": "ctkCollapsibleButton",
    "trainFromSceneRadioButton": "QRadioButton",
    "trainFromFolderRadioButton": "QRadioButton",
    "trainSceneSourceWidget": "QWidget",
    "trainFolderSourceWidget": "QWidget",
    "trainSettingsWidget": "QWidget",
    "trainVolumesSelector": "qMRMLCheckableNodeComboBox",
    "trainSegmentationsSelector": "qMRMLCheckableNodeComboBox",
    "trainDataPathLineEdit": "ctkPathLineEdit",
    "trainDataFolderButton": "QToolButton",
    "trainValidationPathLineEdit": "ctkPathLineEdit",
    "trainValidationFolderButton": "QToolButton",
    "trainOutputPathLineEdit": "ctkPathLineEdit",
    "trainButton": "QPushButton",
    "trainProgressBar": "QProgressBar",
    "trainStatusLabel": "QLabel",
}

# Which widget classes the parameter node wrapper can connect to which parameter types
# (slicer/parameterNodeWrapper/guiConnectors.py: canRepresent of each connector).
CONNECTABLE = {
    "bool": {"QCheckBox", "ctkCheckBox", "QPushButton", "ctkCheckablePushButton"},
    "int": {"QSpinBox", "QSlider", "QDoubleSpinBox", "ctkSliderWidget", "ctkDoubleSpinBox", "qMRMLSliderWidget"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget", "ctkDoubleSpinBox", "qMRMLSliderWidget", "ctkDoubleSlider"},
    "str": {"QComboBox", "ctkComboBox", "QLineEdit", "QLabel", "QTextEdit"},
    "node": {"qMRMLNodeComboBox"},
}


def ui_widgets():
    tree = ET.parse(UI)
    widgets = {}
    parameters = {}
    for widget in tree.iter("widget"):
        widgets[widget.get("name")] = widget.get("class")
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                parameters[prop.find("string").text] = (widget.get("name"), widget.get("class"))
    return tree, widgets, parameters


def module_source():
    return MODULE.read_text(encoding="utf-8")


def widget_files():
    return sorted(WIDGETS.glob("*.py"))


def panel_sources():
    """The module script and every file of its Qt package: all the code that touches the panel's widgets."""
    return "\n".join(path.read_text(encoding="utf-8") for path in [MODULE] + widget_files())


def imported_modules(path):
    """Every module name ``path`` imports (``import a.b``, ``from a.b import c``), anywhere in the file."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


def parameter_annotations():
    """``name -> kind`` (bool/int/float/str/node/list) of the parameter node wrapper's fields."""
    tree = ast.parse(module_source())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "VoxelMorphRegParameterNode")
    kinds = {}
    for item in cls.body:
        if isinstance(item, ast.AnnAssign):
            text = ast.unparse(item.annotation)
            base = text
            if text.startswith("Annotated["):
                base = text[len("Annotated["):].split(",")[0]
            if base.startswith(("vtkMRML", "Union[vtkMRML", "Optional[vtkMRML")):
                kinds[item.target.id] = "node"
            elif base.startswith("list"):
                kinds[item.target.id] = "list"
            else:
                kinds[item.target.id] = base
    return kinds


def test_module_compiles(tmp_path):
    py_compile.compile(str(MODULE), cfile=str(tmp_path / "VoxelMorphReg.pyc"), doraise=True)
    assert widget_files(), "VoxelMorphRegWidgets/ is missing"
    for path in widget_files():
        py_compile.compile(str(path), cfile=str(tmp_path / (path.stem + ".pyc")), doraise=True)


def test_only_python_file_at_the_root():
    assert [p.name for p in ROOT.glob("*.py")] == ["VoxelMorphReg.py"]


def test_module_defines_the_scripted_module_classes():
    names = {n.name for n in ast.parse(module_source()).body if isinstance(n, ast.ClassDef)}
    assert {"VoxelMorphReg", "VoxelMorphRegWidget", "VoxelMorphRegLogic", "VoxelMorphRegTest", "VoxelMorphRegParameterNode"} <= names
    assert 'translate("qSlicerAbstractCoreModule", "Registration")' in module_source()


def test_module_holds_only_the_scripted_module_and_stays_short():
    """The panels live in VoxelMorphRegWidgets; the module file keeps the five classes a newcomer looks for."""
    names = {n.name for n in ast.parse(module_source()).body if isinstance(n, ast.ClassDef)}
    assert names == {"VoxelMorphReg", "VoxelMorphRegWidget", "VoxelMorphRegLogic", "VoxelMorphRegTest", "VoxelMorphRegParameterNode"}
    lines = len(module_source().splitlines())
    assert lines <= MODULE_MAX_LINES, f"VoxelMorphReg.py has {lines} lines; move Qt code to VoxelMorphRegWidgets/, scene helpers to VoxelMorphRegLib/mrml/"
    # What moved stays importable from the module, as before.
    for name in ("VoxelMorphRegRegisterPanel", "VoxelMorphRegTrainPanel", "OPTIONAL_SETTINGS", "connectParametersToWidgets", "isScalarVolume", "_EnginePanel"):
        assert re.search(rf"^(from \S+ import .*\b{name}\b|def {name}\b|{name} = )", module_source(), re.M), name


def test_the_qt_package_is_the_modules_own():
    """VoxelMorphRegWidgets is imported by VoxelMorphReg.py only: never by the engine library, which stays free of Qt."""
    assert any(name.startswith("VoxelMorphRegWidgets") for name in imported_modules(MODULE))
    for path in sorted((ROOT / "VoxelMorphRegLib").rglob("*.py")):
        for name in imported_modules(path):
            root = name.split(".")[0]
            assert root != "VoxelMorphRegWidgets", f"{path.relative_to(ROOT)} imports {name}"
            assert root not in ("qt", "ctk", "PythonQt", "PyQt5", "PyQt6", "PySide2", "PySide6"), f"{path.relative_to(ROOT)} imports {name}"


def test_every_ui_name_used_exists_with_expected_class():
    _, widgets, _ = ui_widgets()
    used = set(re.findall(r"\.ui\.(\w+)", panel_sources()))
    assert used, "no self.ui.<name> found"
    missing = sorted(used - set(widgets))
    assert not missing, f"used in VoxelMorphReg.py or VoxelMorphRegWidgets but not in the .ui: {missing}"
    for name in used:
        if name in EXPECTED_CLASSES:
            assert widgets[name] == EXPECTED_CLASSES[name], f"{name}: {widgets[name]} in the .ui, {EXPECTED_CLASSES[name]} expected"
    unknown = sorted(used - set(EXPECTED_CLASSES))
    assert not unknown, f"add these to EXPECTED_CLASSES with their class: {unknown}"


def test_parameter_names_match_parameter_node_and_widget_kinds():
    _, _, parameters = ui_widgets()
    kinds = parameter_annotations()
    for parameter, (widget, cls) in parameters.items():
        assert parameter in kinds, f"{widget} is bound to '{parameter}', which VoxelMorphRegParameterNode does not define"
        assert cls in CONNECTABLE[kinds[parameter]], f"{widget} ({cls}) cannot show a {kinds[parameter]} parameter '{parameter}'"
    # str parameters shown in a combo box need a Choice annotation (QComboBoxToStringableConnector).
    source = module_source()
    for parameter, (widget, cls) in parameters.items():
        if cls in ("QComboBox", "ctkComboBox"):
            assert re.search(rf"{parameter}: Annotated\[str, Choice\(", source), f"{parameter}: combo box needs Choice([...])"


def test_ui_connects_scene_to_every_node_selector():
    tree, widgets, _ = ui_widgets()
    receivers = {c.findtext("receiver") for c in tree.iter("connection") if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    selectors = {name for name, cls in widgets.items() if cls in ("qMRMLNodeComboBox", "qMRMLCheckableNodeComboBox")}
    assert selectors == receivers
    custom = {c.findtext("class") for c in tree.iter("customwidget")}
    assert {cls for cls in widgets.values() if cls.startswith(("qMRML", "ctk"))} <= custom


def test_train_section_is_optional_and_collapsed_by_default():
    tree, widgets, parameters = ui_widgets()
    section = next(w for w in tree.iter("widget") if w.get("name") == "trainCollapsibleButton")
    assert section.get("class") == "ctkCollapsibleButton"
    collapsed = next(p for p in section.findall("property") if p.get("name") == "collapsed")
    assert collapsed.findtext("bool") == "true"
    inside = {w.get("name") for w in section.iter("widget")}
    assert {name for name in EXPECTED_CLASSES if name.startswith("train")} <= inside
    # Its settings are saved in the parameter node; every one is bound to a widget in the section.
    train_parameters = {name for name in parameter_annotations() if name.startswith("train")}
    assert train_parameters == {p for p in parameters if p.startswith("train")}
    assert all(parameters[p][0] in inside for p in train_parameters)


def test_icon_is_128_pixels():
    png = (ROOT / "Resources" / "Icons" / "VoxelMorphReg.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (128, 128)


# -- CMakeLists.txt ------------------------------------------------------------------------------


def cmake_list(name):
    text = CMAKE.read_text(encoding="utf-8")
    module_name = re.search(r"set\(MODULE_NAME\s+(\S+)\)", text).group(1)
    match = re.search(rf"set\({name}\s+(.*?)\)", text, re.S)
    assert match, f"{name} not set in CMakeLists.txt"
    items = [line.split("#")[0].strip() for line in match.group(1).splitlines()]
    return [item.replace("${MODULE_NAME}", module_name) for item in items if item]


def test_cmake_lists_every_script():
    listed = set(cmake_list("MODULE_PYTHON_SCRIPTS"))
    present = {p.relative_to(ROOT).as_posix() for p in (ROOT / "VoxelMorphRegLib").rglob("*.py") if "__pycache__" not in p.parts}
    present |= {p.relative_to(ROOT).as_posix() for p in widget_files()}
    present.add("VoxelMorphReg.py")
    assert not sorted(present - listed), f"add to MODULE_PYTHON_SCRIPTS in CMakeLists.txt: {sorted(present - listed)}"
    assert not sorted(listed - present), f"listed in CMakeLists.txt but missing (CMake would fail): {sorted(listed - present)}"


def test_cmake_lists_every_resource():
    listed = set(cmake_list("MODULE_PYTHON_RESOURCES"))
    present = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "Resources").rglob("*")
        if p.is_file() and "Screenshots" not in p.relative_to(ROOT / "Resources").parts and "__pycache__" not in p.parts
    }
    assert not sorted(present - listed), f"add to MODULE_PYTHON_RESOURCES in CMakeLists.txt: {sorted(present - listed)}"
    assert not sorted(listed - present), f"listed in CMakeLists.txt but missing (CMake would fail): {sorted(listed - present)}"


def test_cmake_extension_metadata():
    text = CMAKE.read_text(encoding="utf-8")
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert re.search(rf'set\({key}\s+"[^"]+"\)', text), key
    assert re.search(r'set\(EXTENSION_CATEGORY\s+"Registration"\)', text)
    assert re.search(r'set\(EXTENSION_DEPENDS\s+"PyTorch"\)', text)
    for needed in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "slicerMacroBuildScriptedModule(", "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)",
                   "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert needed in text, needed


# -- the MRML bridge stays Qt-free and torch-free at import time ----------------------------------


@pytest.mark.parametrize("path", sorted((ROOT / "VoxelMorphRegLib" / "mrml").glob("*.py")), ids=lambda p: p.name)
def test_mrml_package_imports_neither_qt_nor_torch(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            root = name.split(".")[0]
            assert root not in ("qt", "ctk", "PythonQt", "PyQt5", "PyQt6", "PySide2", "PySide6", "slicer.qt"), f"{path.name} imports {name}"
            assert root != "torch" and root != "monai", f"{path.name} imports {name}"


def test_module_script_never_imports_torch():
    for path in [MODULE] + widget_files():
        for name in imported_modules(path):
            assert name.split(".")[0] not in ("torch", "monai"), f"{path.name} imports {name}"


# -- settings and selectors that the issue-12 review found wrong ---------------------------------------


def _widget_properties(name):
    tree, _, _ = ui_widgets()
    widget = next(w for w in tree.iter("widget") if w.get("name") == name)
    return {p.get("name"): [t.strip() for t in p.itertext() if t.strip()] for p in widget.findall("property")}


def test_model_default_settings_are_none_not_a_sentinel():
    """Each "model default" setting: a check box and a spin box of real values, bound by hand to an Optional parameter (None = the model's)."""
    panel = ast.parse((WIDGETS / "register_panel.py").read_text(encoding="utf-8"))
    assigned = next(n for n in panel.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "OPTIONAL_SETTINGS")
    settings = ast.literal_eval(assigned.value)
    tree = ast.parse(module_source())
    assert {name for name, _, _ in settings} == {"refineIterations", "integrationSteps", "refineSmoothness", "refineLearningRate"}
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "VoxelMorphRegParameterNode")
    fields = {item.target.id: item for item in cls.body if isinstance(item, ast.AnnAssign)}
    _, widgets, parameters = ui_widgets()
    for name, spin_box, check_box in settings:
        assert ast.unparse(fields[name].annotation).startswith("Optional[") and ast.unparse(fields[name].value) == "None", name
        assert widgets[check_box] == "QCheckBox" and widgets[spin_box] in ("QSpinBox", "QDoubleSpinBox")
        assert name not in parameters  # no automatic connector: the panel keeps None <-> "model default"
        properties = _widget_properties(spin_box)
        assert "specialValueText" not in properties and float(properties["minimum"][0]) >= 0, spin_box
    iterations = _widget_properties("refineIterationsSpinBox")
    assert iterations["minimum"] == ["0"] and iterations["singleStep"] == ["50"]  # 0, 50, 100... not 49, 99


def test_output_transform_selectors_offer_grid_transforms_only():
    for name in ("outputTransformSelector", "outputInverseTransformSelector"):
        properties = _widget_properties(name)
        assert properties["nodeTypes"] == ["vtkMRMLGridTransformNode"] and properties["showChildNodeTypes"] == ["false"], name
    kinds = {item.target.id: ast.unparse(item.annotation) for item in ast.walk(ast.parse(module_source())) if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)}
    assert kinds["outputTransform"] == kinds["outputInverseTransform"] == "vtkMRMLGridTransformNode"


def test_fixed_and_moving_selectors_do_not_both_take_the_first_volume():
    """A combo box without "None" selects the first node added, so both would show the first volume loaded;
    the panel picks fixed, then moving, itself (VoxelMorphRegWidget.onNodeAdded)."""
    for name in ("fixedVolumeSelector", "movingVolumeSelector"):
        assert _widget_properties(name)["noneEnabled"] == ["true"], name
    assert "def onNodeAdded(self, caller, event, node)" in module_source()


# -- the in-Slicer check a maintainer runs (Testing/Slicer/run_in_slicer.py) ----------------------------

IN_SLICER = ROOT / "Testing" / "Slicer" / "run_in_slicer.py"


def test_in_slicer_check_compiles_and_uses_the_panel_as_it_is(tmp_path):
    py_compile.compile(str(IN_SLICER), cfile=str(tmp_path / "run_in_slicer.pyc"), doraise=True)
    text = IN_SLICER.read_text(encoding="utf-8")
    _, widgets, _ = ui_widgets()
    used = set(re.findall(r"\bui\.(\w+)", text))
    assert used and not sorted(used - set(widgets)), f"not in the .ui: {sorted(used - set(widgets))}"
    assert "VOXELMORPHREG IN-SLICER CHECK: PASS" in text and "VOXELMORPHREG IN-SLICER CHECK: FAIL" in text
    assert 'downloadSample("MRHead")' in text and "slicer.util.exit(" in text
    # The README points a maintainer at the check; docs/SLICER.md gives the command.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "Testing/Slicer/run_in_slicer.py" in readme and "docs/SLICER.md#checking-the-module-in-a-real-slicer" in readme
    page = (ROOT / "docs" / "SLICER.md").read_text(encoding="utf-8")
    assert "## Checking the module in a real Slicer" in page
    assert "Testing/Slicer/run_in_slicer.py" in page and "--python-script" in page and "--additional-module-paths" in page


def test_supported_slicer_versions_are_stated():
    text = CMAKE.read_text(encoding="utf-8")
    description = re.search(r'set\(EXTENSION_DESCRIPTION\s+"([^"]+)"\)', text).group(1)
    assert "Slicer 5.6 to 5.10" in description and "Supported Slicer versions: 5.6 to 5.10" in text
    assert "**Supported Slicer versions: 5.6, 5.8 and 5.10**" in (ROOT / "README.md").read_text(encoding="utf-8")
