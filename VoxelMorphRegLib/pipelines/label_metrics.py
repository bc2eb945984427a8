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
    a, b = np.asarray(a), np.asarray(b)
    if a.size and a.min() >= 0 and b.min() >= 0 and max(a.max(), b.max()) < 2**20:
        return _dice_by_counting(a.ravel(), b.ravel(), labels)
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


def _dice_by_counting(a: np.ndarray, b: np.ndarray, labels) -> dict[int, float]:
    """Same as the per-label loop, from three label histograms (one pass over the voxels)."""
    size = int(max(a.max(), b.max())) + 1
    count_a = np.bincount(a, minlength=size)
    count_b = np.bincount(b, minlength=size)
    both = np.bincount(a[a == b], minlength=size)
    if labels is None:
        labels = np.flatnonzero((count_a > 0) & (count_b > 0))
    scores = {}
    for label in labels:
        label = int(label)
        if label == 0:
            continue
        total = int(count_a[label] + count_b[label]) if 0 <= label < size else 0
        if total == 0:
            continue
        scores[label] = 2.0 * int(both[label]) / total
    return scores
