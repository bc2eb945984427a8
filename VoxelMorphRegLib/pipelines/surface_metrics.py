"""Surface distance between label maps: the 95th-percentile Hausdorff distance (HD95) in mm.

Computed with MONAI's ``compute_hausdorff_distance(percentile=95, directed=False)`` on each
label's binary mask, with the grid's voxel spacing:

- a mask's surface is its boundary voxels (voxels of the mask with a neighbour outside it,
  MONAI's ``get_mask_edges``: the mask minus its binary erosion);
- for every surface voxel of one map, the Euclidean distance in mm to the nearest surface
  voxel of the other is taken (exact distance transform, anisotropic spacing included);
- HD95 is the larger of the two directed 95th percentiles (prediction -> reference and
  reference -> prediction).

Distances are between voxel centres, so they come in steps of the voxel size; two identical
masks give 0 and a mask shifted by ``n`` voxels gives ``n`` voxel sizes along the shift.
"""

from __future__ import annotations

import warnings

import numpy as np

HD_PERCENTILE = 95.0
DEFINITION = (
    "HD95: per label, max of the two directed 95th percentiles of the Euclidean distances (mm) from the boundary voxels "
    "of one mask to the nearest boundary voxel of the other (MONAI compute_hausdorff_distance, percentile=95, symmetric, "
    "voxel spacing of the fixed grid); NaN when the label is in one map only; averaged over labels"
)


def _crop_to_union(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cropped to the bounding box of their union plus one voxel, so that the
    distance transform runs on a small box. The one-voxel margin keeps every boundary voxel a
    boundary voxel (a mask touching the volume's edge stays touching the box's edge)."""
    union = a | b
    slices = []
    for axis in range(a.ndim):
        other = tuple(i for i in range(a.ndim) if i != axis)
        present = np.flatnonzero(union.any(axis=other))
        low, high = int(present[0]), int(present[-1]) + 1
        if low > 0:
            low -= 1
        if high < a.shape[axis]:
            high += 1
        slices.append(slice(low, high))
    slices = tuple(slices)
    return a[slices], b[slices]


def hd95_per_label(a: np.ndarray, b: np.ndarray, labels, spacing) -> dict[int, float]:
    """HD95 in mm of each label (0 excluded) between label maps ``a`` and ``b`` on one grid.

    ``spacing`` is the voxel size along the array's axes, in the array's axis order (for a
    SimpleITK array ``[k, j, i]``: ``image.GetSpacing()[::-1]``). A label absent from both maps
    is left out (like :func:`dice_per_label`); present in only one, it scores NaN (the distance
    to an empty surface is undefined).
    """
    import torch
    from monai.metrics import compute_hausdorff_distance

    if a.shape != b.shape:
        raise ValueError(f"label maps differ in shape: {a.shape} vs {b.shape}")
    spacing = [float(s) for s in spacing]
    if len(spacing) != a.ndim:
        raise ValueError(f"spacing {spacing} does not match a {a.ndim}D array")
    scores: dict[int, float] = {}
    for label in labels:
        label = int(label)
        if label == 0:
            continue
        in_a, in_b = a == label, b == label
        has_a, has_b = bool(in_a.any()), bool(in_b.any())
        if not has_a and not has_b:
            continue
        if not (has_a and has_b):
            scores[label] = float("nan")
            continue
        crop_a, crop_b = _crop_to_union(in_a, in_b)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = compute_hausdorff_distance(
                torch.from_numpy(np.ascontiguousarray(crop_a))[None, None],
                torch.from_numpy(np.ascontiguousarray(crop_b))[None, None],
                include_background=True,
                percentile=HD_PERCENTILE,
                directed=False,
                spacing=spacing,
            )
        value = float(value.reshape(-1)[0])
        scores[label] = value if np.isfinite(value) else float("nan")
    return scores
