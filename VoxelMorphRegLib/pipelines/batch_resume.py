"""Re-running a batch: which pairs' folders already hold their complete results.

A pair is skipped when its folder holds a complete set (the manifest checks) written from the same
input paths with the same model, refinement, affine, integration and brain-mask settings and output files,
and no input file is newer than its ``metrics.json``.
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import contract
from ..contract import RegisterOptions
from .batch_pairs import BatchPair


def settings_of(options: RegisterOptions, model) -> dict:
    """What a pair's metrics.json must say for its set to count as this batch's result."""
    return {"model": model.description, "affine": bool(options.affine), "refine_iterations": model.refinement["iterations"],
            "refine_smoothness": model.refinement["smoothness"], "refine_learning_rate": model.refinement["learning_rate"],
            "integration_steps": model.integration_steps, "brain_mask_mode": options.brain_mask, "contrast_mode": options.contrast}


def expected_files(options: RegisterOptions, pair: BatchPair) -> set:
    names = {contract.WARPED, contract.DISPLACEMENT}
    if options.inverse:
        names.add(contract.INVERSE_DISPLACEMENT)
    if options.jacobian:
        names.add(contract.JACOBIAN)
    if pair.moving_labels is not None:
        names.add(contract.WARPED_LABELS)
    names = {contract.output_name(n, options.compress) for n in names}
    if options.qc:
        names.add(contract.QC_FIGURE)
    return names


def completed_metrics(folder: Path, pair: BatchPair, options: RegisterOptions, settings: dict, verify: bool = True) -> dict | None:
    """The metrics of ``folder`` when it holds a complete set of this pair with these settings, else None.

    ``verify=False`` skips the checksums of the files (the plan made before the first pair; each
    pair's files are checked at its turn)."""
    import json

    from ..image.output_set import check_manifest

    metrics_path = folder / contract.METRICS
    if not metrics_path.is_file() or (verify and check_manifest(folder, contract.METRICS)):
        return None
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, ValueError):
        return None
    inputs = metrics.get("inputs") or {}
    wanted = {"fixed": str(pair.fixed), "moving": str(pair.moving), "moving_labels": pair.moving_labels and str(pair.moving_labels),
              "fixed_labels": pair.fixed_labels and str(pair.fixed_labels)}
    if any(inputs.get(k) != v for k, v in wanted.items()):
        return None
    if any(metrics.get(k) != v for k, v in settings.items()):
        return None
    expected = expected_files(options, pair)
    if (metrics.get("brain_mask") or {}).get("used"):  # a whole head: the run wrote the masks it used too
        expected |= {contract.output_name(n, options.compress) for n in (contract.BRAIN_MASK, contract.MOVING_BRAIN_MASK)}
    if set(metrics.get("files", {})) != expected:
        return None
    written = metrics_path.stat().st_mtime
    for path in wanted.values():
        try:
            if path and os.stat(path).st_mtime > written:
                return None  # an input changed since
        except OSError:
            return None
    return metrics
