"""Stand-ins for the parts of the Slicer application that VoxelMorphReg.py and VoxelMorphRegWidgets use, on top of the real MRML.

The module's Widget, panels and Logic run in pytest with these: widgets built from the real
``Resources/UI/VoxelMorphReg.ui`` (names, classes and properties as Qt Designer wrote them, with
the signals the module connects to), a ``qt`` module with what the module calls (``QTimer``,
``QFileDialog``, ``Qt``), the scripted-module base classes, and a ``parameterNodeWrapper`` that
behaves like Slicer's where the module depends on it:

* ``connectGui(gui)`` returns ``None`` in Slicer 5.6 and 5.8 (Slicer issue 7547; the tag from 5.10
  on): :data:`SLICER_VERSION` picks which;
* ``connectParametersToGui(mapping)`` returns the tag in every version; ``disconnectGui(tag)``
  removes that tag's connectors, and does nothing for ``None``;
* a combo-box connector clears its combo box and adds the choices when it is made (as
  ``QComboBoxToStringableConnector`` does), so connectors that were never removed see the index
  change and write their parameter.

Everything MRML (the scene, nodes, slice logics) is slicer-core's, not a fake.
"""

from __future__ import annotations

import importlib.util
import sys
import types
import typing
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path

import vtk

ROOT = Path(__file__).resolve().parents[2]
UI_FILE = ROOT / "Resources" / "UI" / "VoxelMorphReg.ui"
SLICER_VERSION = (5, 6)  # set before loading the module; see install()


# -- widgets ---------------------------------------------------------------------------------------------


def _accepted(slot, available: int) -> int:
    import inspect

    try:
        parameters = inspect.signature(slot).parameters.values()
    except (TypeError, ValueError):
        return available
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return available
    return min(available, len([p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]))


class FakeWidget:
    """A widget: properties the module reads and writes, signals it connects to."""

    _EMITS = {"checked": ("toggled(bool)",), "currentPath": ("currentPathChanged(QString)",)}

    def __init__(self, name: str, class_name: str, properties: dict):
        object.__setattr__(self, "_slots", {})
        object.__setattr__(self, "_properties", dict(properties))
        self.objectName, self.className = name, class_name
        self.text = properties.get("text", "")
        self.toolTip = properties.get("toolTip", "")
        self.enabled = properties.get("enabled", True)
        self.visible = True
        self.checked = properties.get("checked", False)
        self.collapsed = properties.get("collapsed", False)
        self.currentPath = ""
        self.format = "%p%"

    def __setattr__(self, name, value):
        old = self.__dict__.get(name, None)
        object.__setattr__(self, name, value)
        if name in self._EMITS and old != value and "objectName" in self.__dict__:
            for signal in self._EMITS[name]:
                self.emit(signal, value)

    def property(self, name):
        return self._properties.get(name)

    def connect(self, signal, slot):
        self._slots.setdefault(signal, []).append(slot)

    def disconnect(self, signal, slot):
        if slot in self._slots.get(signal, []):
            self._slots[signal].remove(slot)

    def connections(self, signal) -> int:
        return len(self._slots.get(signal, []))

    def emit(self, signal, *args):
        for slot in list(self._slots.get(signal, [])):
            slot(*args[: _accepted(slot, len(args))])  # PythonQt passes a slot only as many arguments as it takes

    def setVisible(self, visible):
        self.visible = bool(visible)

    def setMRMLScene(self, scene):
        self.scene = scene

    def click(self):
        if self.enabled:
            self.emit("clicked(bool)", False)

    def clear(self):
        self.text = ""

    def appendPlainText(self, line):
        self.text = (self.text + "\n" if self.text else "") + line


class FakeSpinBox(FakeWidget):
    def __init__(self, name, class_name, properties):
        super().__init__(name, class_name, properties)
        self.decimal = class_name in ("QDoubleSpinBox", "ctkDoubleSpinBox", "ctkSliderWidget")
        kind = float if self.decimal else int
        self.minimum = kind(properties.get("minimum", 0))
        self.maximum = kind(properties.get("maximum", 99 if not self.decimal else 99.99))
        object.__setattr__(self, "value", kind(properties.get("value", self.minimum)))

    def __setattr__(self, name, value):
        if name == "value" and "minimum" in self.__dict__:
            kind = float if self.decimal else int
            value = min(self.maximum, max(self.minimum, kind(value)))
            changed = value != self.__dict__.get("value")
            object.__setattr__(self, "value", value)
            if changed:
                self.emit("valueChanged(double)" if self.decimal else "valueChanged(int)", value)
            return
        super().__setattr__(name, value)


class FakeComboBox(FakeWidget):
    """QComboBox: items with data; index changes are signalled (also by clear() and the first addItem)."""

    def __init__(self, name, class_name, properties):
        super().__init__(name, class_name, properties)
        object.__setattr__(self, "items", [])
        object.__setattr__(self, "_index", -1)

    @property
    def count(self):
        return len(self.items)

    @property
    def currentIndex(self):
        return self._index

    @currentIndex.setter
    def currentIndex(self, index):
        index = int(index)
        if index != self._index:
            object.__setattr__(self, "_index", index)
            self.emit("currentIndexChanged(int)", index)

    @property
    def currentText(self):
        return self.items[self._index][0] if 0 <= self._index < len(self.items) else ""

    def clear(self):
        self.items.clear()
        self.currentIndex = -1

    def addItem(self, text, data=None):
        self.items.append([text, data, None])
        if self._index < 0:
            self.currentIndex = 0

    def setItemData(self, index, value, role=None):
        self.items[index][2] = value

    def itemData(self, index):
        return self.items[index][1] if 0 <= index < len(self.items) else None

    def findText(self, text):
        return next((i for i, item in enumerate(self.items) if item[0] == text), -1)

    def findData(self, data):
        return next((i for i, item in enumerate(self.items) if item[1] == data), -1)


class FakeNodeComboBox(FakeWidget):
    def __init__(self, name, class_name, properties):
        super().__init__(name, class_name, properties)
        object.__setattr__(self, "_node", None)

    def currentNode(self):
        return self._node

    def setCurrentNode(self, node):
        if node is not self._node:
            object.__setattr__(self, "_node", node)
            self.emit("currentNodeChanged(vtkMRMLNode*)", node)


class FakeCheckableNodeComboBox(FakeWidget):
    def __init__(self, name, class_name, properties):
        super().__init__(name, class_name, properties)
        object.__setattr__(self, "_checked", [])

    def checkedNodes(self):
        return list(self._checked)

    def setCheckState(self, node, state):
        if state and node not in self._checked:
            self._checked.append(node)
        elif not state and node in self._checked:
            self._checked.remove(node)
        self.emit("checkedNodesChanged()")


_CLASSES = {
    "QSpinBox": FakeSpinBox, "QDoubleSpinBox": FakeSpinBox, "ctkSliderWidget": FakeSpinBox, "ctkDoubleSpinBox": FakeSpinBox,
    "QComboBox": FakeComboBox, "ctkComboBox": FakeComboBox,
    "qMRMLNodeComboBox": FakeNodeComboBox, "qMRMLCheckableNodeComboBox": FakeCheckableNodeComboBox,
}


def _property_value(prop):
    child = next(iter(prop))
    text = child.text or ""
    if child.tag == "bool":
        return text == "true"
    if child.tag == "number":
        return int(text)
    if child.tag == "double":
        return float(text)
    if child.tag == "stringlist":
        return [s.text for s in child.findall("string")]
    return text


def ui_from_file(path=UI_FILE):
    """``(root widget, namespace of every named widget)`` as ``loadUI`` + ``childWidgetVariables`` give them."""
    tree = ET.parse(path)
    widgets = {}
    for element in tree.iter("widget"):
        properties = {p.get("name"): _property_value(p) for p in element.findall("property") if len(p)}
        cls = _CLASSES.get(element.get("class"), FakeWidget)
        widgets[element.get("name")] = cls(element.get("name"), element.get("class"), properties)
    root = next(iter(widgets.values()))
    return root, types.SimpleNamespace(**widgets)


# -- qt, the scripted-module base classes, the parameter node wrapper -----------------------------------------


TIMERS: list = []  # every QTimer made; FakeApp.processEvents fires the active ones (the event loop's part)


class QTimer:
    def __init__(self):
        self.interval, self.active, self._slots = 0, False, []
        TIMERS.append(self)

    def setInterval(self, ms):
        self.interval = ms

    def connect(self, signal, slot):
        self._slots.append(slot)

    def start(self):
        self.active = True

    def stop(self):
        self.active = False

    def isActive(self):
        return self.active

    def fire(self):
        for slot in list(self._slots):
            slot()


def _qt_module():
    qt = types.ModuleType("qt")
    qt.QTimer = QTimer
    qt.QFileDialog = types.SimpleNamespace(getOpenFileName=lambda *a: "", getExistingDirectory=lambda *a: "")
    qt.Qt = types.SimpleNamespace(ToolTipRole=3, Checked=2, Unchecked=0)
    qt.QWidget = FakeWidget
    return qt


class _Parent:
    def __init__(self):
        self.isEntered = True
        self.title = ""


def _scripted_module_module(slicer):
    module = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent or _Parent()

        def setup(self):
            self.layout = types.SimpleNamespace(addWidget=lambda widget: None)

        def resourcePath(self, name):
            return str(ROOT / "Resources" / name)

    class ScriptedLoadableModuleLogic:
        def getParameterNode(self):
            scene = slicer.mrmlScene
            node = scene.GetSingletonNode("VoxelMorphReg", "vtkMRMLScriptedModuleNode")
            if node is None:
                node = slicer.vtkMRMLScriptedModuleNode()
                node.SetSingletonTag("VoxelMorphReg")
                node.SetModuleName("VoxelMorphReg")
                node = scene.AddNode(node)
            return node

    module.ScriptedLoadableModule = ScriptedLoadableModule
    module.ScriptedLoadableModuleWidget = ScriptedLoadableModuleWidget
    module.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=1000):
            print(message)

    module.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest
    return module


class Choice:
    def __init__(self, choices):
        self.choices = list(choices)


class WithinRange:
    def __init__(self, low, high):
        self.low, self.high = low, high


_VALUES: dict = {}  # parameter node ID -> {name: value}: what every wrapper of that node reads


def _defaults(cls):
    values = {}
    for name, annotation in typing.get_type_hints(cls, include_extras=True).items():
        if name in cls.__dict__:
            values[name] = cls.__dict__[name]
        elif typing.get_origin(annotation) is list:
            values[name] = []
        else:
            values[name] = None
    return values


def _choices(cls, name):
    annotation = typing.get_type_hints(cls, include_extras=True)[name]
    for extra in getattr(annotation, "__metadata__", ()):
        if isinstance(extra, Choice):
            return extra.choices
    return None


def parameterNodeWrapper(cls):
    """A wrapper class like Slicer's for the module's parameter node class (see the module docstring)."""
    defaults = _defaults(cls)

    class Wrapper:
        def __init__(self, node):
            object.__setattr__(self, "parameterNode", node)
            object.__setattr__(self, "_guis", {})
            object.__setattr__(self, "_next_tag", 0)
            values = _VALUES.setdefault(node.GetID(), {})
            for name, value in defaults.items():
                values.setdefault(name, list(value) if isinstance(value, list) else value)

        @property
        def _values(self):
            return _VALUES[self.parameterNode.GetID()]

        def __getattr__(self, name):
            if name in defaults:
                value = self._values[name]
                return list(value) if isinstance(value, list) else value
            return getattr(self.parameterNode, name)

        def __setattr__(self, name, value):
            if name not in defaults:
                raise AttributeError(f"{cls.__name__} has no parameter {name}")
            if self._values.get(name) != value or (value is not None and self._values.get(name) is not value):
                self._values[name] = list(value) if isinstance(value, list) else value
                self.parameterNode.Modified()

        # -- GUI connections, as Slicer's wrapper makes them --------------------------------------------

        def connectParametersToGui(self, mapping):
            tag = self._next_tag
            object.__setattr__(self, "_next_tag", tag + 1)
            connectors = {}
            for name, widget in mapping.items():
                if name not in defaults:
                    raise ValueError(f"no parameter {name}")
                connectors[name] = _connector(self, name, widget, _choices(cls, name))
            self._guis[tag] = connectors
            return tag

        def connectGui(self, gui):
            mapping = {w.property("SlicerParameterName"): w for w in vars(gui).values() if w.property("SlicerParameterName")}
            tag = self.connectParametersToGui(mapping)
            return tag if SLICER_VERSION >= (5, 10) else None

        def disconnectGui(self, tag):
            for connector in self._guis.pop(tag, {}).values():
                connector.disconnect()

        def connectorCount(self) -> int:
            return sum(len(c) for c in self._guis.values())

    Wrapper.__name__ = cls.__name__
    Wrapper.allParameters = dict(defaults)
    return Wrapper


class _Connector:
    """One widget <-> one parameter; the signal it listens to writes the parameter."""

    def __init__(self, wrapper, name, widget, choices):
        self.wrapper, self.name, self.widget, self.choices = wrapper, name, widget, choices
        if isinstance(widget, FakeComboBox):
            # QComboBoxToStringableConnector: the combo box is cleared and filled when the connector is made.
            widget.clear()
            for choice in choices:
                widget.addItem(str(choice))
            self.signal = "currentIndexChanged(int)"
        elif isinstance(widget, FakeNodeComboBox):
            self.signal = "currentNodeChanged(vtkMRMLNode*)"
        elif isinstance(widget, FakeSpinBox):
            self.signal = "valueChanged(double)" if widget.decimal else "valueChanged(int)"
        else:
            self.signal = "toggled(bool)"
        self.write(getattr(wrapper, name))
        widget.connect(self.signal, self.changed)
        self.tag = wrapper.parameterNode.AddObserver(vtk.vtkCommand.ModifiedEvent, lambda caller, event: self.write(getattr(wrapper, name)))

    def write(self, value):
        widget = self.widget
        if isinstance(widget, FakeComboBox):
            if value in self.choices:
                widget.currentIndex = self.choices.index(value)
        elif isinstance(widget, FakeNodeComboBox):
            widget.setCurrentNode(value)
        elif isinstance(widget, FakeSpinBox):
            widget.value = value
        else:
            widget.checked = bool(value)

    def changed(self, *args):
        widget = self.widget
        if isinstance(widget, FakeComboBox):
            value = self.choices[widget.currentIndex]  # Slicer's connector: index -1 reads the last choice
        elif isinstance(widget, FakeNodeComboBox):
            value = widget.currentNode()
        elif isinstance(widget, FakeSpinBox):
            value = widget.value
        else:
            value = widget.checked
        setattr(self.wrapper, self.name, value)

    def disconnect(self):
        self.widget.disconnect(self.signal, self.changed)
        self.wrapper.parameterNode.RemoveObserver(self.tag)


def _connector(wrapper, name, widget, choices):
    return _Connector(wrapper, name, widget, choices)


# -- the application ---------------------------------------------------------------------------------------


class FakeApp:
    def __init__(self, temporary_path):
        self.temporaryPath = str(temporary_path)
        self.processed = 0

    def processEvents(self):
        self.processed += 1
        for timer in list(TIMERS):
            if timer.active:
                timer.fire()

    def testingEnabled(self):
        return True


class _NoCursor:
    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


def install(monkeypatch, temporary_path, version=(5, 6)):
    """Put the stand-ins in place (undone by ``monkeypatch``) and load VoxelMorphReg.py; returns ``(module, slicer, messages)``."""
    global SLICER_VERSION
    import slicer
    import slicer.util

    monkeypatch.setattr(sys.modules[__name__], "SLICER_VERSION", tuple(version))
    _VALUES.clear()
    TIMERS.clear()
    scene = slicer.vtkMRMLScene()
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer, "app", FakeApp(temporary_path), raising=False)
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(), raising=False)
    messages = []
    monkeypatch.setattr(slicer.util, "loadUI", lambda path: ui_from_file(path)[0])
    built = {}

    def load_ui(path):
        root, namespace = ui_from_file(path)
        built[id(root)] = namespace
        return root

    monkeypatch.setattr(slicer.util, "loadUI", load_ui)
    monkeypatch.setattr(slicer.util, "childWidgetVariables", lambda root: built[id(root)])
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kwargs: messages.append(("error", text)))
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, **kwargs: True)
    monkeypatch.setattr(slicer.util, "WaitCursor", _NoCursor)
    monkeypatch.setitem(sys.modules, "qt", _qt_module())
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", _scripted_module_module(slicer))
    wrapper_module = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper_module.parameterNodeWrapper, wrapper_module.Choice, wrapper_module.WithinRange = parameterNodeWrapper, Choice, WithinRange
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", wrapper_module)
    # The panels' package binds ``qt`` when it is imported: import it afresh against these stand-ins.
    for name in [n for n in sys.modules if n == "VoxelMorphRegWidgets" or n.startswith("VoxelMorphRegWidgets.")]:
        monkeypatch.delitem(sys.modules, name)
    spec = importlib.util.spec_from_file_location("VoxelMorphReg", ROOT / "VoxelMorphReg.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "VoxelMorphReg", module)
    spec.loader.exec_module(module)
    return module, slicer, messages
