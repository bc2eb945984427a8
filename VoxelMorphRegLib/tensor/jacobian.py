"""Jacobian determinant of a displacement and the folding statistics reported with every result.

Kept rather than ITK's ``DisplacementFieldJacobianDeterminantFilter``: callers hand it a flow in
the grid's own index axes (``physical_to_flow``), which makes it right on oblique grids, where
differences scaled by the spacing alone are not (docs/GEOMETRY.md, Jacobians).
"""

from __future__ import annotations

import torch


def jacobian_determinant(flow: torch.Tensor, spacing=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """det(I + grad u) of ``x -> x + u(x)`` for ``flow`` ``[B, 3, K, J, I]`` in voxel units.

    Central differences inside, one-sided at the borders (``torch.gradient``); ``spacing``
    only matters for anisotropic grids where the flow is in voxel units of each axis, in
    which case the determinant is the same (the scaling cancels) -- it is accepted for
    physical flows. Returns ``[B, K, J, I]``; values <= 0 mark folding.
    """
    flow = flow.float()
    grads = []
    for channel in range(3):
        grads.append(torch.stack(torch.gradient(flow[:, channel], dim=(1, 2, 3), spacing=tuple(float(s) for s in spacing)), dim=1))
    # j[r][c]: derivative of component r along axis c, plus the identity.
    j = [[grads[r][:, c] + (1.0 if r == c else 0.0) for c in range(3)] for r in range(3)]
    return (
        j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
        - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
        + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0])
    )


def folding_statistics(determinant: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
    """Fraction of voxels with det J <= 0, and std of log det J over voxels with det J > 0.

    The field is not clipped or smoothed before counting: folding is reported, not hidden.
    """
    det = determinant.flatten() if mask is None else determinant[mask.bool()].flatten()
    positive = det[det > 0]
    return {
        "folding_fraction": float((det <= 0).float().mean()) if det.numel() else 0.0,
        "folded_voxels": int((det <= 0).sum()),
        "std_log_jacobian": float(torch.log(positive).std()) if positive.numel() > 1 else 0.0,
        "jacobian_min": float(det.min()) if det.numel() else 1.0,
        "jacobian_max": float(det.max()) if det.numel() else 1.0,
        "definition": "det(I + grad u), central differences; folding = det <= 0; std of log det over det > 0",
    }
