"""Scene volumes and segmentations -> the training files the engine reads: pairing, validation split, NIfTI, CSVs, labels."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import require_slicer_core

sitk = pytest.importorskip("SimpleITK")
slicer = require_slicer_core()

from mrml_scene_data import make_segmentation, make_volume, scene_data  # noqa: E402,F401
from VoxelMorphRegLib.errors import VoxelMorphRegError  # noqa: E402
from VoxelMorphRegLib.mrml import training_export as te  # noqa: E402
from VoxelMorphRegLib.mrml import volumes  # noqa: E402


def test_segmentations_are_paired_with_their_volumes(scene_data):
    v, segs = scene_data["volumes"], scene_data["segmentations"]
    pairs = te.pair_segmentations(v, [segs[2], segs[0], segs[1]])
    assert [(a.GetName(), b.GetName() if b else None) for a, b in pairs] == [("subj0", None), ("subj1", "subj1_seg"), ("subj2", "subj2 segmentation"), ("subj3", "subj3-label")]
    # The reference geometry volume wins over the name.
    renamed = make_segmentation(scene_data["scene"], v[0], "subj2_other", ["X"])
    renamed.SetReferenceImageGeometryParameterFromVolumeNode(v[0])
    assert te.pair_segmentations(v, [renamed])[0][1] is renamed
    # A label map on exactly one volume's grid belongs to it; unknown names and doubles are refused.
    label_map = volumes.sitk_to_volume(volumes.volume_to_sitk(v[3]), scene=scene_data["scene"], name="labels of something", label=True)
    assert te.pair_segmentations(v, [label_map])[3][1] is label_map
    stranger = make_segmentation(scene_data["scene"], v[0], "subject1 seg", ["X"])
    with pytest.raises(VoxelMorphRegError, match="subject1 seg: cannot tell"):
        te.pair_segmentations(v, [stranger])
    with pytest.raises(VoxelMorphRegError, match="two segmentations"):
        te.pair_segmentations(v, [segs[0], make_segmentation(scene_data["scene"], v[1], "subj1-label", ["X"])])
    # "subj1" must not take "subj10_seg".
    v10 = make_volume(scene_data["scene"], "subj10", (6, 6, 6), (1, 1, 1), (0, 0, 0), 0, 9)
    assert te.pair_segmentations([v[1], v10], [make_segmentation(scene_data["scene"], v10, "subj10_seg", ["X"])])[1][1] is not None


def test_validation_holds_out_the_last_labelled_subjects(scene_data):
    pairs = te.pair_segmentations(scene_data["volumes"], scene_data["segmentations"])
    train, val = te.split_validation(pairs, 2)
    assert [a.GetName() for a, _ in train] == ["subj0", "subj1"] and [a.GetName() for a, _ in val] == ["subj2", "subj3"]
    assert te.split_validation(pairs, 0) == (pairs, [])
    with pytest.raises(VoxelMorphRegError, match="at least 2"):
        te.split_validation(pairs, 1)
    with pytest.raises(VoxelMorphRegError, match="only 3"):
        te.split_validation(pairs, 4)


def test_scene_subjects_written_as_nifti_with_consistent_labels(scene_data, tmp_path):
    v = scene_data["volumes"]
    pairs = te.pair_segmentations(v, scene_data["segmentations"])
    train, val = te.split_validation(pairs, 2)
    data = te.write_training_data(tmp_path / "data", train, val)
    rows = list(csv.DictReader(data.train_csv.open()))
    val_rows = list(csv.DictReader(data.validation_csv.open()))
    assert [r["name"] for r in rows] == ["subj0", "subj1"] and [r["name"] for r in val_rows] == ["subj2", "subj3"]
    assert rows[0]["labels"] == "" and all(r["labels"] for r in rows[1:] + val_rows)
    assert data.atlas == data.folder / rows[0]["image"]  # first training volume by default
    # Volumes: same voxels and geometry (LPS) as the nodes.
    for row, volume in zip(rows + val_rows, v):
        image = sitk.ReadImage(str(data.folder / row["image"]))
        expected = volumes.volume_to_sitk(volume)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(expected))
        np.testing.assert_allclose(image.GetDirection(), expected.GetDirection(), atol=1e-6)
        np.testing.assert_allclose(image.GetOrigin(), expected.GetOrigin(), atol=1e-4)
        if row["labels"]:
            labels = sitk.ReadImage(str(data.folder / row["labels"]))
            assert labels.GetSize() == image.GetSize()
            np.testing.assert_allclose(labels.GetOrigin(), image.GetOrigin(), atol=1e-4)
    # One value per structure name in every subject (case ignored): what Dice compares across subjects.
    legend = json.loads((data.folder / "labels.json").read_text())
    value = {name.lower(): int(k) for k, name in legend.items()}
    assert sorted(value) == ["amygdala", "hippocampus", "thalamus"] and len(set(value.values())) == 3

    def box_value(row, index):  # segment number ``index`` (0-based) of its subject sits in slices 1+3i..2+3i
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(data.folder / row["labels"])))
        found = set(np.unique(array[1 + 3 * index: 3 + 3 * index, 2:8, 2:9])) - {0}
        assert len(found) == 1
        return int(found.pop())

    assert box_value(rows[1], 0) == value["hippocampus"] and box_value(rows[1], 1) == value["amygdala"]
    assert [box_value(val_rows[0], i) for i in range(3)] == [value["amygdala"], value["thalamus"], value["hippocampus"]]
    assert [box_value(val_rows[1], i) for i in range(2)] == [value["hippocampus"], value["thalamus"]]
    # Writing again with unchanged volumes reuses the files; a changed volume gets a new file.
    again = te.write_training_data(tmp_path / "data", train, val)
    assert list(csv.DictReader(again.train_csv.open())) == rows
    slicer.util.arrayFromVolume(v[0])[0, 0, 0] += 1.0
    v[0].GetImageData().Modified()
    changed = list(csv.DictReader(te.write_training_data(tmp_path / "data", train, val).train_csv.open()))
    assert changed[0]["image"] != rows[0]["image"] and changed[1] == rows[1]


def test_label_maps_keep_their_values(scene_data, tmp_path):
    v = scene_data["volumes"]
    array = np.zeros(volumes.volume_size(v[0])[::-1], np.int16)
    array[2:4, 2:5, 2:6] = 17
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(volumes.volume_to_sitk(v[0]))
    label_map = volumes.sitk_to_volume(image, scene=scene_data["scene"], name="subj0_aseg", label=True)
    data = te.write_training_data(tmp_path / "data", te.pair_segmentations(v[:2], [label_map, scene_data["segmentations"][0]]))
    rows = list(csv.DictReader(data.train_csv.open()))
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(data.folder / rows[0]["labels"])))
    assert set(np.unique(written)) == {0, 17}
    second = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(data.folder / rows[1]["labels"]))))) - {0}
    assert 17 not in second and len(second) == 2  # segments get values the label map does not use


def test_first_image_follows_the_engine_order(tmp_path):
    folder = tmp_path / "subjects"
    folder.mkdir()
    for name in ("b_T1.nii.gz", "a_seg.nii.gz", "a_T1.nii.gz", "notes.txt", "c.nrrd"):
        (folder / name).write_bytes(b"")
    assert te.first_image(folder) == folder / "a_T1.nii.gz"
    table = tmp_path / "list.csv"
    table.write_text("image,labels\n,only_labels.nii.gz\nimgs/x.nii.gz,\n")
    assert te.first_image(table) == tmp_path / "imgs" / "x.nii.gz"
    try:
        from VoxelMorphRegLib.pipelines.train import sources_from  # imports torch
    except ImportError:
        return
    assert Path(next(s.image for s in sources_from(folder) if s.image)) == te.first_image(folder)
