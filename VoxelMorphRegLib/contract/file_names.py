"""The names of the files the engine writes: a register run's outputs, batch's summary, training's checkpoints and log."""

from __future__ import annotations

WARPED = "warped.nii.gz"
WARPED_LABELS = "warped_labels.nii.gz"
DISPLACEMENT = "displacement.nii.gz"  # fixed -> moving, on the fixed grid, LPS mm
INVERSE_DISPLACEMENT = "inverse_displacement.nii.gz"  # moving -> fixed, on the moving grid
JACOBIAN = "jacobian.nii.gz"
BRAIN_MASK = "brain_mask.nii.gz"  # the fixed scan's brain mask (uint8, fixed grid), with --brain-mask auto
MOVING_BRAIN_MASK = "moving_brain_mask.nii.gz"  # the moving scan's, on its own grid
METRICS = "metrics.json"
QC_FIGURE = "qc.png"
# Every file a register run may write into --out; metrics.json is written last.
REGISTER_IMAGES = (WARPED, WARPED_LABELS, DISPLACEMENT, INVERSE_DISPLACEMENT, JACOBIAN, BRAIN_MASK, MOVING_BRAIN_MASK)
REGISTER_OUTPUTS = REGISTER_IMAGES + (QC_FIGURE, METRICS)


def output_name(name: str, compressed: bool = True) -> str:
    """The file name of the output ``name`` (spelled as above) in the format a run writes:
    ``warped.nii.gz``, or ``warped.nii`` with ``RegisterOptions.compress=False`` (``--uncompressed``)."""
    return name if compressed or not name.endswith(".nii.gz") else name[: -len(".gz")]


# Every name a register run may write, in both formats (a re-run in the other format replaces them).
REGISTER_OUTPUT_NAMES = REGISTER_OUTPUTS + tuple(output_name(name, False) for name in REGISTER_IMAGES)
# Batch registration (``voxelmorphreg batch``): the summary in --out, one row per pair of the input CSV.
BATCH_SUMMARY = "summary.csv"
BATCH_SUMMARY_COLUMNS = ("name", "status", "seconds", "error", "mean_dice_before", "mean_dice_after", "folding_fraction", "out")
BATCH_STATUSES = ("ok", "failed", "interrupted", "skipped", "pending")

LAST_CHECKPOINT = "last.pt"  # written every few steps and on a stop; the same command resumes from it
BEST_CHECKPOINT = "best.pt"  # best validation Dice (the last model without a validation set)
TRAINING_LOG = "log.csv"
# Columns of log.csv, in order; validation_dice is empty on steps without validation.
TRAINING_LOG_COLUMNS = ("step", "kind", "loss", "similarity", "smoothness", "dice_loss", "learning_rate", "seconds_per_step",
                        "validation_dice", "validation_dice_skull_stripped", "validation_dice_whole_head")
