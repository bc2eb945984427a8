"""The engine's ``log.csv`` read as it grows: one :class:`TrainingRow` per new complete row (Qt-free).

The training engine appends a row per step to ``OUT/log.csv`` (columns:
:data:`VoxelMorphRegLib.contract.TRAINING_LOG_COLUMNS`; the header names them, so columns are read
by name). :class:`TrainingLogReader` hands over only rows it has not returned before and whose
line is complete, and starts again when the file was replaced by a shorter one.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path


def _float(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


@dataclass
class TrainingRow:
    """One row of the engine's ``log.csv``; ``validation_dice`` is NaN on steps without validation."""

    step: int
    loss: float
    validation_dice: float
    values: dict  # every column as a float (NaN where empty)


class TrainingLogReader:
    """Reads the rows appended to a ``log.csv`` since the last call; a partly written row waits for its end."""

    def __init__(self, path):
        self.path = Path(path)
        self.offset = 0
        self.columns: list[str] | None = None

    def read_new(self) -> list[TrainingRow]:
        try:
            size = self.path.stat().st_size
        except OSError:
            return []
        if size < self.offset:  # replaced by a new, shorter file: start again
            self.offset, self.columns = 0, None
        if size == self.offset:
            return []
        try:
            with self.path.open("rb") as stream:
                stream.seek(self.offset)
                data = stream.read(size - self.offset)
        except OSError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        rows = []
        for raw in data[: end + 1].decode("utf-8", "replace").splitlines():
            if not raw.strip():
                continue
            cells = next(csv.reader([raw]))
            if self.columns is None:
                self.columns = [c.strip() for c in cells]
                continue
            values = {name: _float(cells[i]) if i < len(cells) and cells[i].strip() else math.nan for i, name in enumerate(self.columns)}
            step = values.get("step", math.nan)
            if not math.isfinite(step):
                continue
            rows.append(TrainingRow(int(step), values.get("loss", math.nan), values.get("validation_dice", math.nan), values))
        return rows
