"""metrics.json -> table node: the expected rows and values."""

import json
import math

import pytest
from conftest import require_slicer_core

slicer = require_slicer_core()

from VoxelMorphRegLib.errors import VoxelMorphRegError  # noqa: E402
from VoxelMorphRegLib.mrml import tables  # noqa: E402

SAMPLE = {
    "seconds": {"reading": 0.4, "affine": 1.5, "network": 0.75, "writing": 0.35, "total": 3.0},
    "device": "cuda",
    "model": "Resources/Models/brain_t1.pt",
    "folding_fraction": 0.00012,
    "std_log_jacobian": 0.153,
    "dice": {
        "labels": [2, 17],
        "before": {"2": 0.61, "17": 0.52},
        "after": {"2": 0.83, "17": 0.79},
        "mean_before": 0.565,
        "mean_after": 0.81,
    },
}


def test_rows_from_sample_metrics_file(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(SAMPLE))
    node = tables.new_metrics_table(tables.read_metrics(path), {2: "Left white matter"}, name="metrics")
    assert [node.GetColumnName(c) for c in range(node.GetNumberOfColumns())] == list(tables.COLUMNS)
    rows = tables.table_rows(node)
    assert [r[0] for r in rows] == [
        "Dice",
        "Dice",
        "Dice (mean)",
        "Folding fraction (det J <= 0)",
        "Std of log det J",
        "Runtime: reading",
        "Runtime: affine",
        "Runtime: network",
        "Runtime: writing",
        "Runtime: total",
    ]
    assert rows[0][1:5] == ("Left white matter", 2.0, 0.61, 0.83)
    assert rows[1][1:5] == ("Label 17", 17.0, 0.52, 0.79)
    assert rows[2][3:5] == (0.565, 0.81)
    assert math.isnan(rows[3][3]) and rows[3][4] == pytest.approx(0.00012) and rows[3][5] == "fraction of voxels"
    assert rows[4][4] == pytest.approx(0.153)
    assert rows[-1][4] == pytest.approx(3.0) and rows[-1][5] == "s"
    assert node.GetAttribute("VoxelMorphReg.Device") == "cuda"
    assert node.GetAttribute("VoxelMorphReg.Model") == "Resources/Models/brain_t1.pt"


def test_without_dice_only_folding_and_runtime():
    metrics = {key: value for key, value in SAMPLE.items() if key != "dice"}
    rows = tables.metric_rows(metrics)
    assert not any(r[0].startswith("Dice") for r in rows)
    assert rows[0][0].startswith("Folding")


def test_refilling_an_existing_table_replaces_rows():
    node = slicer.vtkMRMLTableNode()
    tables.fill_metrics_table(node, SAMPLE)
    tables.fill_metrics_table(node, {"seconds": {"total": 1.0}})
    rows = tables.table_rows(node)
    assert len(rows) == 1
    metric, segment, label, before, after, unit = rows[0]
    assert (metric, segment, label, after, unit) == ("Runtime: total", "", 0.0, 1.0, "s") and math.isnan(before)


def test_unreadable_metrics_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("{not json")
    with pytest.raises(VoxelMorphRegError, match="metrics.json"):
        tables.read_metrics(path)


WHOLE_HEAD = {
    **SAMPLE,
    "brain_mask_mode": "auto",
    "folding_region": "fixed brain mask",
    "brain_mask": {
        "mode": "auto",
        "used": True,
        "fixed": {"source": "network", "volume_ml": 1187.4, "seconds": 0.8},
        "moving": {"source": "stripped", "volume_ml": 1120.0, "seconds": 0.1},
        "taper_mm": [6.0, 18.0],
    },
}


def test_brain_mask_rows_say_whether_the_masks_were_used_their_volumes_and_the_folding_region():
    rows = tables.table_rows(tables.new_metrics_table(WHOLE_HEAD))
    names = [r[0] for r in rows]
    at = names.index("Brain masks used")
    assert names[at - 1] == "Dice (mean)"  # after the Dice rows, before the folding rows they explain
    assert names[at:at + 4] == [
        "Brain masks used",
        "Brain mask volume: fixed (brain extraction network)",
        "Brain mask volume: moving (skull-stripped scan's foreground)",
        "Folding fraction (det J <= 0)",
    ]
    used, fixed, moving, folding = rows[at:at + 4]
    assert used[1] == "auto" and used[4] == 1.0 and used[5] == "1 = yes, 0 = no" and math.isnan(used[3])
    assert (fixed[1], fixed[4], fixed[5]) == ("Brain", pytest.approx(1187.4), "mL")
    assert moving[4] == pytest.approx(1120.0)
    assert folding[1] == "fixed brain mask" and rows[at + 4][:2] == ("Std of log det J", "fixed brain mask")


def test_brain_mask_rows_when_the_masks_were_not_used():
    stripped = {**WHOLE_HEAD, "folding_region": "whole fixed grid", "brain_mask": {**WHOLE_HEAD["brain_mask"], "used": False}}
    rows = {r[0]: r for r in tables.metric_rows(stripped)}
    assert rows["Brain masks used"][4] == 0.0 and rows["Folding fraction (det J <= 0)"][1] == "whole fixed grid"
    off = {**SAMPLE, "brain_mask_mode": "off", "folding_region": "whole fixed grid"}  # --brain-mask off: no brain_mask block
    rows = [r for r in tables.metric_rows(off) if r[0].startswith("Brain")]
    assert [(r[0], r[1], r[4]) for r in rows] == [("Brain masks used", "off", 0.0)]
    # An engine from before the brain masks: no brain rows, the folding rows without a region.
    assert not [r for r in tables.metric_rows(SAMPLE) if r[0].startswith("Brain")]
    assert {r[0]: r for r in tables.metric_rows(SAMPLE)}["Folding fraction (det J <= 0)"][1] == ""
