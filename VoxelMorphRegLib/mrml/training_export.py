"""Scene volumes and segmentations -> the training files the engine reads (Qt-free).

* :func:`pair_segmentations` finds each training volume's segmentation (or label map);
* :func:`split_validation` holds out the last labelled subjects for validation;
* :func:`write_training_data` writes them as NIfTI (labels on their volume's grid, one value per
  structure name across subjects) with the ``train.csv`` / ``val.csv`` lists and ``labels.json``;
* :func:`first_image` is the atlas the engine would take from a folder or CSV.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import VoxelMorphRegError
from ..pipelines.training_sources import sources_from
from .runner import _check_volume
from .segmentations import LabelInfo, is_label_map, is_segmentation, label_map_infos, labels_image, labels_to_array, match_fixed_labels, segment_infos
from .volumes import ijk_to_ras, voxel_array, volume_size, volume_to_sitk


def _normalised(name: str) -> str:
    return " ".join((name or "").lower().split())


def _same_grid(a, b) -> bool:
    return volume_size(a) == volume_size(b) and np.allclose(ijk_to_ras(a), ijk_to_ras(b), atol=1e-4)


def pair_segmentations(volumes, segmentations=()) -> list[tuple]:
    """``[(volume, segmentation or None), ...]`` in the order of ``volumes``.

    A segmentation (or label map volume) belongs to the volume that is (1) its segmentation's
    reference geometry volume, else (2) the volume whose name starts its name followed by a
    separator or nothing (``T1`` for ``T1_seg``, ``T1-label``, ``T1 segmentation``; the longest
    such name wins), else (3) the only volume on the same grid (label maps). Raises
    :class:`VoxelMorphRegError` for a segmentation that fits no volume or a volume given two.
    """
    volumes = [v for v in volumes if v is not None]
    segmentations = [s for s in segmentations if s is not None]
    assigned: dict[int, object] = {}
    by_id = {id(v): v for v in volumes}
    for segmentation in segmentations:
        target = None
        if is_segmentation(segmentation):
            reference = segmentation.GetNodeReference("referenceImageGeometryRef")
            target = next((v for v in volumes if reference is not None and v is reference), None)
        if target is None:
            name = _normalised(segmentation.GetName())
            candidates = []
            for volume in volumes:
                stem = _normalised(volume.GetName())
                rest = name[len(stem):]
                if stem and name.startswith(stem) and (rest == "" or rest[0] in " _-.") and volume is not segmentation:
                    candidates.append((len(stem), volume))
            if candidates:
                target = max(candidates, key=lambda c: c[0])[1]
        if target is None and is_label_map(segmentation) and segmentation.GetImageData() is not None:
            same = [v for v in volumes if v.GetImageData() is not None and _same_grid(v, segmentation)]
            if len(same) == 1:
                target = same[0]
        if target is None:
            raise VoxelMorphRegError(
                f"{segmentation.GetName()}: cannot tell which training volume it belongs to; "
                "name it after its volume (e.g. VOLUME_seg) or make that volume its reference geometry"
            )
        if id(target) in assigned:
            raise VoxelMorphRegError(f"{target.GetName()}: has two segmentations ({assigned[id(target)].GetName()}, {segmentation.GetName()}); pick one")
        assigned[id(target)] = segmentation
    return [(by_id[id(v)], assigned.get(id(v))) for v in volumes]


def split_validation(pairs: list[tuple], count: int) -> tuple[list[tuple], list[tuple]]:
    """``(training, validation)``: the last ``count`` subjects that have labels are held out for validation."""
    count = int(count or 0)
    if count <= 0:
        return list(pairs), []
    if count == 1:
        raise VoxelMorphRegError("validation needs at least 2 labelled subjects (Dice is measured between pairs)")
    labelled = [i for i, (_, labels) in enumerate(pairs) if labels is not None]
    if len(labelled) < count:
        raise VoxelMorphRegError(f"{count} validation subjects asked for, but only {len(labelled)} training volumes have a segmentation")
    held = set(labelled[-count:])
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]


def label_legend(label_nodes) -> tuple[list[LabelInfo], dict[str, dict[str, int]]]:
    """One label value per structure across all subjects.

    Label map volumes keep their values (e.g. FreeSurfer asegs); segments get the value of the
    label of the same name (case and spacing ignored), or a value nothing else uses. Returns the
    legend and, per segmentation node ID, ``{segment ID: value}`` for
    :func:`.segmentations.labels_to_array`.
    """
    legend: list[LabelInfo] = []
    used: set[int] = set()
    for node in label_nodes:
        if is_label_map(node):
            values = [int(v) for v in np.unique(voxel_array(node)) if v != 0]
            for info in label_map_infos(node, values):
                if info.value not in used:
                    legend.append(info)
                    used.add(info.value)
    segment_values: dict[str, dict[str, int]] = {}
    for node in label_nodes:
        if is_segmentation(node):
            infos = segment_infos(node)
            mapping = match_fixed_labels(legend, infos, keep_values=False)
            segment_values[node.GetID() or str(id(node))] = {info.segment_id: mapping[info.value] for info in infos}
            for info in infos:
                value = mapping[info.value]
                if value not in used:
                    legend.append(LabelInfo(value, info.name, info.color))
                    used.add(value)
    return legend, segment_values


def _safe_name(name: str, taken: set) -> str:
    base = re.sub(r"[^A-Za-z0-9.-]+", "_", name or "volume").strip("._") or "volume"
    candidate, number = base, 2
    while candidate.lower() in taken:
        candidate, number = f"{base}_{number}", number + 1
    taken.add(candidate.lower())
    return candidate


def _digest(image: sitk.Image) -> str:
    """Short hash of voxels and geometry: a changed volume gets a new file name (and a new cache entry)."""
    digest = hashlib.sha1()
    array = sitk.GetArrayViewFromImage(image)
    digest.update(str((array.dtype.str, array.shape, image.GetOrigin(), image.GetSpacing(), image.GetDirection())).encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:10]


def _write_image(image: sitk.Image, folder: Path, stem: str) -> Path:
    path = folder / f"{stem}-{_digest(image)}.nii.gz"
    if not path.exists():
        partial = path.with_name(path.name.replace(".nii.gz", ".partial.nii.gz"))
        sitk.WriteImage(image, str(partial), True)
        os.replace(partial, path)
    return path


def _write_csv(path: Path, rows: list[tuple]) -> None:
    partial = path.with_suffix(".partial.csv")
    with partial.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["name", "image", "labels"])
        writer.writerows(rows)
    os.replace(partial, path)


@dataclass
class TrainingData:
    """What :func:`write_training_data` wrote."""

    folder: Path
    train_csv: Path
    validation_csv: Path | None
    atlas: Path
    legend: list[LabelInfo]


def write_training_data(folder, train_pairs, validation_pairs=(), atlas_volume=None) -> TrainingData:
    """Write scene subjects as NIfTI (labels on their volume's grid) and the CSVs the engine reads.

    ``*_pairs``: ``(volume, segmentation or label map or None)``. Files are named after the
    node and a hash of the content, so an unchanged volume is not written twice and a changed
    one never meets a stale cache entry. ``atlas_volume`` defaults to the first training volume.
    The CSVs name files relative to themselves; ``labels.json`` gives each label value's name.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VoxelMorphRegError(f"{folder}: cannot create the training data folder ({exc})") from None
    all_pairs = list(train_pairs) + list(validation_pairs)
    for volume, _ in all_pairs:
        _check_volume(volume, "training")
    legend, segment_values = label_legend([labels for _, labels in all_pairs if labels is not None])
    taken: set = set()

    def rows_for(pairs):
        rows = []
        for volume, labels in pairs:
            name = _safe_name(volume.GetName(), taken)
            image_path = _write_image(volume_to_sitk(volume), folder, name)
            labels_path = None
            if labels is not None:
                values = segment_values.get(labels.GetID() or str(id(labels))) if is_segmentation(labels) else None
                array, _ = labels_to_array(labels, volume, values)
                labels_path = _write_image(labels_image(array, ijk_to_ras(volume), labels.GetName()), folder, f"{name}_labels")
            rows.append((name, image_path.name, labels_path.name if labels_path else ""))
        return rows

    train_rows = rows_for(train_pairs)
    validation_rows = rows_for(validation_pairs)
    if atlas_volume is not None:
        _check_volume(atlas_volume, "atlas")
        atlas = _write_image(volume_to_sitk(atlas_volume), folder, "atlas")
    elif train_rows:
        atlas = folder / train_rows[0][1]
    else:
        raise VoxelMorphRegError("no training volume")
    train_csv = folder / "train.csv"
    _write_csv(train_csv, train_rows)
    validation_csv = None
    if validation_rows:
        validation_csv = folder / "val.csv"
        _write_csv(validation_csv, validation_rows)
    (folder / "labels.json").write_text(json.dumps({str(i.value): i.name for i in sorted(legend, key=lambda i: i.value)}, indent=1), encoding="utf-8")
    return TrainingData(folder, train_csv, validation_csv, atlas, legend)


def first_image(path) -> Path | None:
    """The first subject's image of a training folder or CSV, in the engine's order (``None`` if labels only)."""
    try:
        sources = sources_from(path)
    except VoxelMorphRegError:
        return None
    return next((Path(source.image) for source in sources if source.image), None)
