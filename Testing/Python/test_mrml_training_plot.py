"""The training plot's MRML nodes: tables, plot series and chart, updated row by row."""

import math

import pytest
from conftest import require_slicer_core

slicer = require_slicer_core()

from VoxelMorphRegLib.mrml.training_plot import TrainingPlot  # noqa: E402
from VoxelMorphRegLib.mrml.training_log import TrainingRow  # noqa: E402


def rows(first, last, validate_every=5):
    return [TrainingRow(s, 1.0 / s, 0.5 + s / 100 if s % validate_every == 0 else math.nan, {}) for s in range(first, last + 1)]


def column(table_node, name):
    table = table_node.GetTable()
    array = table.GetColumnByName(name)
    return [array.GetValue(i) for i in range(table.GetNumberOfRows())]


def test_nodes_are_wired_for_a_plot_view():
    scene = slicer.vtkMRMLScene()
    plot = TrainingPlot(scene, name="my training")
    series = slicer.vtkMRMLPlotSeriesNode
    assert [plot.table.GetTable().GetColumnName(i) for i in range(3)] == ["step", "loss", "validation_dice"]
    assert [plot.validation_table.GetTable().GetColumnName(i) for i in range(2)] == ["step", "validation_dice"]
    assert plot.chart.GetNumberOfPlotSeriesNodes() == 2
    assert plot.chart.GetNthPlotSeriesNode(0) is plot.loss_series and plot.chart.GetNthPlotSeriesNode(1) is plot.dice_series
    assert plot.loss_series.GetTableNode() is plot.table and plot.dice_series.GetTableNode() is plot.validation_table
    for node, y in ((plot.loss_series, "loss"), (plot.dice_series, "validation_dice")):
        assert node.GetPlotType() == series.PlotTypeScatter and node.GetXColumnName() == "step" and node.GetYColumnName() == y
    assert plot.dice_series.GetMarkerStyle() == series.MarkerStyleCircle and plot.loss_series.GetMarkerStyle() == series.MarkerStyleNone
    assert plot.chart.GetTitle() == "my training" and plot.chart.GetXAxisTitle() == "step"
    assert plot.in_scene and all(node.GetScene() is scene for node in plot.nodes().values())
    # A second plot in the same scene gets its own, uniquely named nodes.
    other = TrainingPlot(scene, name="my training")
    assert other.chart.GetName() != plot.chart.GetName() and other.table.GetName() != plot.table.GetName()


def test_rows_are_appended_and_the_series_told():
    scene = slicer.vtkMRMLScene()
    plot = TrainingPlot(scene)
    events = []
    plot.loss_series.AddObserver(slicer.vtkMRMLPlotSeriesNode.TableModifiedEvent, lambda caller, event: events.append("loss"))
    plot.dice_series.AddObserver(slicer.vtkMRMLPlotSeriesNode.TableModifiedEvent, lambda caller, event: events.append("dice"))
    plot.add_rows(rows(1, 7))
    assert plot.number_of_rows == 7 and events == ["loss", "dice"]
    plot.add_rows(rows(8, 9))  # no validated step: the Dice table is left alone
    assert events == ["loss", "dice", "loss"]
    plot.add_rows([])
    assert events == ["loss", "dice", "loss"]
    plot.add_rows(rows(10, 12))
    assert column(plot.table, "step") == [float(s) for s in range(1, 13)]
    assert column(plot.table, "loss") == pytest.approx([1.0 / s for s in range(1, 13)])
    dice = column(plot.table, "validation_dice")
    assert [s + 1 for s, d in enumerate(dice) if not math.isnan(d)] == [5, 10]
    assert column(plot.validation_table, "step") == [5.0, 10.0]
    assert column(plot.validation_table, "validation_dice") == pytest.approx([0.55, 0.6])
    plot.clear()
    assert plot.number_of_rows == 0 and plot.validation_table.GetTable().GetNumberOfRows() == 0


def test_a_scene_close_takes_the_nodes_and_remove_cleans_up():
    scene = slicer.vtkMRMLScene()
    plot = TrainingPlot(scene)
    scene.Clear(0)
    assert not plot.in_scene
    plot = TrainingPlot(scene)
    count = scene.GetNumberOfNodes()
    plot.remove()
    assert scene.GetNumberOfNodes() == count - 5


class _TableNodeOf560:
    """A table node as Slicer 5.6.0 has it: no Set/GetUseColumnTitleAsColumnHeader (added in 5.6.2)."""

    MISSING = ("SetUseColumnTitleAsColumnHeader", "GetUseColumnTitleAsColumnHeader")

    def __init__(self, node):
        self._node = node

    def __getattr__(self, name):
        if name in self.MISSING:
            raise AttributeError(f"'vtkMRMLTableNode' object has no attribute '{name}'")
        return getattr(self._node, name)


class _SceneOf560:
    def __init__(self, scene, fail_on=None):
        self._scene, self._fail_on = scene, fail_on

    def __getattr__(self, name):
        return getattr(self._scene, name)

    def AddNewNodeByClass(self, class_name, name=""):
        if class_name == self._fail_on:
            raise RuntimeError(f"cannot create {class_name}")
        node = self._scene.AddNewNodeByClass(class_name, name)
        return _TableNodeOf560(node) if class_name == "vtkMRMLTableNode" else node


def test_plot_builds_with_the_table_node_of_slicer_5_6_0():
    scene = slicer.vtkMRMLScene()
    plot = TrainingPlot(_SceneOf560(scene))
    plot.add_rows(rows(1, 10))
    assert plot.number_of_rows == 10 and plot.validation_table.GetTable().GetNumberOfRows() == 2
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == 1


def test_a_plot_that_cannot_be_built_leaves_no_node_behind():
    scene = slicer.vtkMRMLScene()
    before = scene.GetNumberOfNodes()
    with pytest.raises(RuntimeError):
        TrainingPlot(_SceneOf560(scene, fail_on="vtkMRMLPlotChartNode"))
    assert scene.GetNumberOfNodes() == before
