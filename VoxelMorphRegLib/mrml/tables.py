"""The registration's numbers (metrics.json) as a table node.

One row per measurement, columns ``Metric``, ``Segment``, ``Label``, ``Before``, ``After``,
``Unit``:

* ``Dice`` -- one row per label the engine compared (fixed segmentation vs. moving one
  before and after registration), named after the segment; then ``Dice (mean)``;
* ``Brain masks used`` -- 1 when the registration went brain to brain (``--brain-mask auto`` on a
  whole head), else 0; ``Segment`` holds the mode (``auto``/``off``). Then ``Brain mask volume:
  fixed`` and ``...: moving`` in mL, saying where each mask came from (the brain extraction
  network, or the foreground of a scan that was already skull-stripped);
* ``Folding fraction`` -- fraction of fixed voxels where det(J) <= 0 (``After`` only);
* ``Std of log det(J)`` -- on the unclipped field (``After`` only);
  ``Segment`` of these two says where they were taken: ``fixed brain mask`` or ``whole fixed grid``;
* ``Runtime: <stage>`` and ``Runtime: total`` in seconds.

``Before`` is NaN where a measurement has no "before". The compute device and the model are
kept as table node attributes ``VoxelMorphReg.Device`` and ``VoxelMorphReg.Model``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import vtk

import slicer

from ..errors import VoxelMorphRegError

COLUMNS = ("Metric", "Segment", "Label", "Before", "After", "Unit")
_DESCRIPTIONS = {
    "Metric": "What is measured",
    "Segment": "Segment the Dice row is about; the region the folding rows cover; the brain mask mode",
    "Label": "Label value used in the label maps given to the engine",
    "Before": "Value before registration (Dice of fixed vs. moving as given)",
    "After": "Value after registration",
    "Unit": "Unit of Before and After",
}


def read_metrics(path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VoxelMorphRegError(f"{path.name}: cannot be read ({exc})") from None


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def metric_rows(metrics: dict, label_names: dict[int, str] | None = None) -> list[tuple]:
    """Rows ``(metric, segment, label, before, after, unit)`` for a metrics dictionary."""
    label_names = label_names or {}
    rows: list[tuple] = []
    dice = metrics.get("dice") or {}
    if dice:
        before, after = dice.get("before") or {}, dice.get("after") or {}
        labels = dice.get("labels") or sorted({int(k) for k in list(before) + list(after)})
        for label in labels:
            label = int(label)
            rows.append(("Dice", label_names.get(label, f"Label {label}"), label, _number(before.get(str(label))), _number(after.get(str(label))), ""))
        rows.append(("Dice (mean)", "", 0, _number(dice.get("mean_before")), _number(dice.get("mean_after")), ""))
    rows += brain_mask_rows(metrics)
    region = str(metrics.get("folding_region") or "")
    if "folding_fraction" in metrics:
        rows.append(("Folding fraction (det J <= 0)", region, 0, math.nan, _number(metrics["folding_fraction"]), "fraction of voxels"))
    if "std_log_jacobian" in metrics:
        rows.append(("Std of log det J", region, 0, math.nan, _number(metrics["std_log_jacobian"]), ""))
    seconds = metrics.get("seconds") or {}
    for stage, value in seconds.items():
        if stage != "total":
            rows.append((f"Runtime: {stage}", "", 0, math.nan, _number(value), "s"))
    if "total" in seconds:
        rows.append(("Runtime: total", "", 0, math.nan, _number(seconds["total"]), "s"))
    return rows


_MASK_SOURCES = {"network": "brain extraction network", "stripped": "skull-stripped scan's foreground"}


def brain_mask_rows(metrics: dict) -> list[tuple]:
    """Whether the brain masks were used, and each mask's volume (mL) and origin, from metrics.json's ``brain_mask``."""
    report = metrics.get("brain_mask") or {}
    mode = str(metrics.get("brain_mask_mode") or report.get("mode") or "")
    if not report and not mode:
        return []  # an engine from before the brain masks
    rows = [("Brain masks used", mode, 0, math.nan, 1.0 if report.get("used") else 0.0, "1 = yes, 0 = no")]
    for role in ("fixed", "moving"):
        mask = report.get(role) or {}
        if "volume_ml" in mask:
            source = _MASK_SOURCES.get(mask.get("source"), str(mask.get("source") or "unknown source"))
            rows.append((f"Brain mask volume: {role} ({source})", "Brain", 0, math.nan, _number(mask["volume_ml"]), "mL"))
    return rows


def _new_column(table: vtk.vtkTable, name: str, array_class):
    column = array_class()
    column.SetName(name)
    table.AddColumn(column)
    return column


def fill_metrics_table(table_node, metrics: dict, label_names: dict[int, str] | None = None) -> None:
    """Replace the content of ``table_node`` with the metrics (see the module docstring)."""
    rows = metric_rows(metrics, label_names)
    table = vtk.vtkTable()
    metric = _new_column(table, "Metric", vtk.vtkStringArray)
    segment = _new_column(table, "Segment", vtk.vtkStringArray)
    label = _new_column(table, "Label", vtk.vtkIntArray)
    before = _new_column(table, "Before", vtk.vtkDoubleArray)
    after = _new_column(table, "After", vtk.vtkDoubleArray)
    unit = _new_column(table, "Unit", vtk.vtkStringArray)
    for row in rows:
        metric.InsertNextValue(row[0])
        segment.InsertNextValue(row[1])
        label.InsertNextValue(int(row[2]))
        before.InsertNextValue(row[3])
        after.InsertNextValue(row[4])
        unit.InsertNextValue(row[5])
    with slicer.util.NodeModify(table_node):
        table_node.SetAndObserveTable(table)
        for name, text in _DESCRIPTIONS.items():
            table_node.SetColumnDescription(name, text)
        table_node.SetAttribute("VoxelMorphReg.Device", str(metrics.get("device", "")))
        table_node.SetAttribute("VoxelMorphReg.Model", str(metrics.get("model", "")))
        table_node.SetLocked(True)


def new_metrics_table(metrics: dict, label_names: dict[int, str] | None = None, name: str | None = None, node=None):
    """A table node (new, outside any scene, unless ``node`` is given) filled with the metrics."""
    if node is None:
        node = slicer.vtkMRMLTableNode()
    if name:
        node.SetName(name)
    fill_metrics_table(node, metrics, label_names)
    return node


def table_rows(table_node) -> list[tuple]:
    """The table's rows as tuples (for tests and console use)."""
    table = table_node.GetTable()
    rows = []
    for r in range(table.GetNumberOfRows()):
        rows.append(tuple(table.GetValue(r, c).ToString() if table.GetColumn(c).IsA("vtkStringArray") else table.GetValue(r, c).ToDouble() for c in range(table.GetNumberOfColumns())))
    return rows
