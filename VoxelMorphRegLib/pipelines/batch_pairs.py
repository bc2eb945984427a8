"""The pairs CSV of batch registration (``voxelmorphreg batch --pairs pairs.csv``).

Columns ``fixed``, ``moving`` and optionally ``moving_labels``, ``fixed_labels``, ``name``;
relative paths are relative to the CSV's folder. A CSV that cannot be used at all is refused in
one line (exit 2) before any work; a pair whose files are missing or damaged fails alone, later.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..contract import BATCH_SUMMARY
from ..errors import VoxelMorphRegError

INPUT_COLUMNS = ("fixed", "moving", "moving_labels", "fixed_labels", "name")
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".gz")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=-]{0,199}$")


@dataclass
class BatchPair:
    """One row of the pairs CSV, paths resolved."""

    name: str
    fixed: Path
    moving: Path
    moving_labels: Path | None = None
    fixed_labels: Path | None = None
    row: int = 0  # line number in the CSV (the header is line 1)



def _stem(path: Path) -> str:
    name = path.name
    for suffix in _IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name


def read_pairs(csv_path) -> list[BatchPair]:
    """The pairs of ``csv_path``; one-line errors (exit 2) for a file that cannot be used at all.

    Missing image files are not checked here: such a pair fails alone, the others go on."""
    csv_path = Path(csv_path)
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise VoxelMorphRegError(f"--pairs {csv_path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise VoxelMorphRegError(f"--pairs {csv_path}: not a text (UTF-8) CSV file") from None
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    unknown = [c for c in columns if c not in INPUT_COLUMNS]
    if unknown or "fixed" not in columns or "moving" not in columns:
        what = f"unknown column(s) {', '.join(map(repr, unknown))}" if unknown else "no 'fixed' and 'moving' columns"
        raise VoxelMorphRegError(f"--pairs {csv_path}: {what}; the columns are fixed, moving and optionally moving_labels, fixed_labels, name")
    base = csv_path.parent
    pairs, names = [], {}
    for number, raw in enumerate(reader, start=2):
        if None in raw:
            raise VoxelMorphRegError(f"--pairs {csv_path} line {number}: more cells than columns")
        row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if not any(row.values()):
            continue  # a blank line
        if not row.get("fixed") or not row.get("moving"):
            raise VoxelMorphRegError(f"--pairs {csv_path} line {number}: 'fixed' and 'moving' are both needed")

        def path(column):
            value = row.get(column)
            if not value:
                return None
            p = Path(os.path.expanduser(value))
            return p if p.is_absolute() else base / p

        fixed, moving = path("fixed"), path("moving")
        name = row.get("name") or f"{_stem(moving)}_to_{_stem(fixed)}"
        if not _NAME.match(name) or name in (".", "..") or name == BATCH_SUMMARY:
            raise VoxelMorphRegError(f"--pairs {csv_path} line {number}: {name!r} cannot be a folder name (letters, digits and _ . + = -, not starting with . or -)")
        if name.lower() in names:  # folder names: "A" and "a" are one folder on macOS and Windows
            hint = "" if row.get("name") else "; give the pairs a 'name' column"
            raise VoxelMorphRegError(f"--pairs {csv_path} line {number}: pair name {name!r} repeats line {names[name.lower()]}{hint}")
        names[name.lower()] = number
        pairs.append(BatchPair(name, fixed, moving, path("moving_labels"), path("fixed_labels"), number))
    if not pairs:
        raise VoxelMorphRegError(f"--pairs {csv_path}: no pairs")
    return pairs
