"""``DIR/summary.csv`` of batch registration: one row per pair of the CSV, in its order, with its status.

Written atomically before the first pair and after every pair, so an interruption leaves it
consistent with the pairs' folders (columns: :data:`~VoxelMorphRegLib.contract.BATCH_SUMMARY_COLUMNS`).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from ..contract import BATCH_SUMMARY, BATCH_SUMMARY_COLUMNS
from ..errors import VoxelMorphRegError


@dataclass
class PairOutcome:
    """One row of summary.csv."""

    name: str
    status: str = "pending"
    seconds: float | None = None
    error: str = ""
    mean_dice_before: float | None = None
    mean_dice_after: float | None = None
    folding_fraction: float | None = None
    out: str = ""

    def row(self) -> dict:
        def text(value):
            if value is None:
                return ""
            if isinstance(value, float):
                return repr(round(value, 6))
            return str(value)

        return {column: text(getattr(self, column)) for column in BATCH_SUMMARY_COLUMNS}

    def add_metrics(self, metrics: dict) -> None:
        """The pair's Dice and folding, from its metrics.json."""
        dice = metrics.get("dice") or {}
        self.mean_dice_before = dice.get("mean_before")
        self.mean_dice_after = dice.get("mean_after")
        self.folding_fraction = metrics.get("folding_fraction")


@dataclass
class BatchSummary:
    out: Path
    outcomes: list = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)



def write_summary(out: Path, outcomes) -> Path:
    """summary.csv, atomically (a reader sees the earlier or the new version, never a mix)."""
    from ..image.io import write_bytes

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(BATCH_SUMMARY_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for outcome in outcomes:
        writer.writerow(outcome.row())
    try:
        return write_bytes(buffer.getvalue().encode("utf-8"), out / BATCH_SUMMARY)
    except OSError as exc:
        raise VoxelMorphRegError(f"{out / BATCH_SUMMARY}: cannot be written ({exc.strerror or exc})") from None
