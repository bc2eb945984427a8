"""The live training plot: log.csv rows -> table nodes -> plot series -> a plot chart (Qt-free).

Nodes (all in the scene given, named after ``name``):

* ``table``: one row per ``log.csv`` row, columns ``step``, ``loss``, ``validation_dice``
  (NaN on the steps without validation);
* ``validation_table``: the validated steps only, columns ``step``, ``validation_dice``. The
  Dice series reads this one: a plot line breaks at NaN values, so a series on ``table``
  would draw isolated markers rather than a curve;
* ``loss_series`` and ``dice_series``: scatter series (x = step) of those tables;
* ``chart``: a plot chart holding both series. Inside the application,
  ``slicer.modules.plots.logic().ShowChartInLayout(chart)`` shows it in a plot view
  (switching to a layout that has one).

:meth:`TrainingPlot.add_rows` appends rows and tells the views once (one ``Modified`` per table).
"""

from __future__ import annotations

import math

import vtk

import slicer

TABLE_COLUMNS = ("step", "loss", "validation_dice")
VALIDATION_COLUMNS = ("step", "validation_dice")
LOSS_COLOR = (0.2, 0.4, 0.9)
DICE_COLOR = (0.9, 0.45, 0.1)


def _new_table(scene, name: str, columns) -> "slicer.vtkMRMLTableNode":
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    table = node.GetTable()
    for column in columns:
        array = vtk.vtkDoubleArray()
        array.SetName(column)
        table.AddColumn(array)
    # The table view shows the column names (the default in every Slicer version; 5.6.0 has no
    # SetUseColumnTitleAsColumnHeader, 5.6.2 renamed SetUseColumnNameAsColumnHeader to it).
    return node


def _new_series(scene, name: str, table_node, y_column: str, color, markers: bool):
    series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", scene.GenerateUniqueName(name))
    series.SetAndObserveTableNodeID(table_node.GetID())
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
    series.SetXColumnName("step")
    series.SetYColumnName(y_column)
    series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleSolid)
    series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle if markers else slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
    series.SetColor(*color)
    return series


class TrainingPlot:
    """Table, series and chart nodes of one training's curves; see the module docstring."""

    def __init__(self, scene, name: str = "VoxelMorphReg training"):
        self.scene = scene
        self.table = self.validation_table = self.loss_series = self.dice_series = self.chart = None
        try:
            self.table = _new_table(scene, f"{name} log", TABLE_COLUMNS)
            self.validation_table = _new_table(scene, f"{name} validation", VALIDATION_COLUMNS)
            self.loss_series = _new_series(scene, "training loss", self.table, "loss", LOSS_COLOR, markers=False)
            self.dice_series = _new_series(scene, "validation Dice", self.validation_table, "validation_dice", DICE_COLOR, markers=True)
            self.chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(name))
            self.chart.SetTitle(name)
            self.chart.SetXAxisTitle("step")
            self.chart.SetYAxisTitle("loss / validation Dice")
            self.chart.SetLegendVisibility(True)
            self.chart.AddAndObservePlotSeriesNodeID(self.loss_series.GetID())
            self.chart.AddAndObservePlotSeriesNodeID(self.dice_series.GetID())
        except BaseException:
            self.remove()  # no half-made plot left in the scene
            raise

    def nodes(self) -> dict:
        return {
            "table": self.table,
            "validation_table": self.validation_table,
            "loss_series": self.loss_series,
            "dice_series": self.dice_series,
            "chart": self.chart,
        }

    @property
    def in_scene(self) -> bool:
        """Whether every node is still in its scene (a scene close removes them)."""
        return all(node.GetScene() is self.scene and self.scene.IsNodePresent(node) for node in self.nodes().values())

    @property
    def number_of_rows(self) -> int:
        return self.table.GetTable().GetNumberOfRows()

    def add_rows(self, rows) -> None:
        """Append ``TrainingRow``-like rows (``step``, ``loss``, ``validation_dice``; NaN: no validation)."""
        rows = list(rows)
        if not rows:
            return
        table = self.table.GetTable()
        validation = self.validation_table.GetTable()
        columns = [table.GetColumnByName(name) for name in TABLE_COLUMNS]
        validation_columns = [validation.GetColumnByName(name) for name in VALIDATION_COLUMNS]
        validated = False
        for row in rows:
            dice = float(row.validation_dice) if row.validation_dice is not None else math.nan
            for array, value in zip(columns, (float(row.step), float(row.loss), dice)):
                array.InsertNextValue(value)
            if math.isfinite(dice):
                validation_columns[0].InsertNextValue(float(row.step))
                validation_columns[1].InsertNextValue(dice)
                validated = True
        for array in columns:
            array.Modified()
        table.Modified()  # the table node turns this into Modified; its series into TableModifiedEvent
        if validated:
            for array in validation_columns:
                array.Modified()
            validation.Modified()
        # Slicer's own plot() helper does the same: an updated chart may otherwise stay empty.
        self.chart.Modified()

    def clear(self) -> None:
        for node, names in ((self.table, TABLE_COLUMNS), (self.validation_table, VALIDATION_COLUMNS)):
            table = node.GetTable()
            for name in names:
                table.GetColumnByName(name).SetNumberOfTuples(0)
            table.Modified()
        self.chart.Modified()

    def remove(self) -> None:
        """Take the nodes out of the scene."""
        for node in self.nodes().values():
            scene = node.GetScene() if node is not None else None
            if scene is not None:
                scene.RemoveNode(scene.GetNodeByID(node.GetID()))
