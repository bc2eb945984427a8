"""Overlap and surface-distance metrics between label maps (NumPy arrays on one grid)."""

from __future__ import annotations

import numpy as np


def dice_per_label(a: np.ndarray, b: np.ndarray, labels=None) -> dict[int, float]:
    """Dice of each label (0 excluded) in ``labels``, or of every label present in both maps.

    A requested label absent from both maps is left out (its Dice is undefined); absent from
    one only, it scores 0.
    """
    if a.shape != b.shape:
        raise ValueError(f"label maps differ in shape: {a.shape} vs {b.shape}")
    if labels is None:
        labels = np.intersect1d(np.unique(a), np.unique(b))
    scores = {}
    for label in labels:
        label = int(label)
        if label == 0:
            continue
        in_a, in_b = a == label, b == label
        total = int(in_a.sum()) + int(in_b.sum())
        if total == 0:
            continue
        scores[label] = 2.0 * int(np.logical_and(in_a, in_b).sum()) / total
    return scores
