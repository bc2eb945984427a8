"""Which subjects a training or evaluation run uses: a CSV or a folder, read without importing torch.

A CSV has ``image`` and ``labels`` columns (either may be empty; relative paths are relative to
the CSV) and an optional ``name``. In a folder, ``NAME_<tag>`` files with tag ``seg``, ``labels``,
``label`` or ``aseg`` are the label maps of the images whose names start with ``NAME_``; label
maps without an image are label-only (synthetic) subjects.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import VoxelMorphRegError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
LABEL_TAGS = ("seg", "labels", "label", "aseg")


@dataclass
class SubjectSource:
    name: str
    image: str | None
    labels: str | None


def _strip_suffix(name: str) -> str:
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def sources_from(path) -> list[SubjectSource]:
    """Subjects of a CSV (``image,labels`` columns) or a folder (``NAME_<tag>`` pairs images with labels)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".csv":
        rows = list(csv.DictReader(path.open()))
        if not rows or not ({"image", "labels"} & set(rows[0])):
            raise VoxelMorphRegError(f"{path}: a training CSV needs an 'image' and/or 'labels' column")
        sources = []
        for number, row in enumerate(rows, start=1):
            image = (row.get("image") or "").strip() or None
            labels = (row.get("labels") or "").strip() or None
            if image is None and labels is None:
                raise VoxelMorphRegError(f"{path}: row {number} names neither an image nor labels")
            resolve = lambda p: p if p is None or os.path.isabs(p) else str(path.parent / p)  # noqa: E731
            name = (row.get("name") or "").strip() or _strip_suffix(Path(image or labels).name)
            sources.append(SubjectSource(name, resolve(image), resolve(labels)))
        return sources
    if not path.is_dir():
        raise VoxelMorphRegError(f"{path}: training data must be a folder or a .csv file")
    groups: dict[str, dict] = {}
    for file in sorted(path.iterdir()):
        stem = _strip_suffix(file.name)
        if stem == file.name:
            continue
        key, _, tag = stem.rpartition("_")
        if tag.lower() in LABEL_TAGS and key:
            groups.setdefault(key, {})["labels"] = str(file)
        else:
            groups.setdefault(key if key else stem, {}).setdefault("images", []).append(str(file))
    sources = []
    for key, group in sorted(groups.items()):
        images = group.get("images", [None])
        for image in images:
            name = _strip_suffix(Path(image).name) if image else key
            sources.append(SubjectSource(name, image, group.get("labels")))
    if not sources:
        raise VoxelMorphRegError(f"{path}: no volumes found (expected {', '.join(IMAGE_SUFFIXES)})")
    return sources
