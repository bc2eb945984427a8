"""Jacobian determinant of a displacement and the folding statistics reported with every result.

Kept rather than ITK's ``DisplacementFieldJacobianDeterminantFilter``: callers hand it a flow in
the grid's own index axes (``physical_to_flow``), which makes it right on oblique grids, where
differences scaled by the spacing alone are not (docs/GEOMETRY.md, Jacobians).
"""

from __future__ import annotations

import numpy as np
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


# Slices per slab of :func:`physical_jacobian_determinant`: its temporaries (about 20 arrays of a
# slab) stay a few tens of MB whatever the image size.
SLAB_SLICES = 16


def physical_jacobian_determinant(field, index_to_physical) -> torch.Tensor:
    """det J of ``p -> p + u(p)`` for a physical field ``u`` ``[K, J, I, 3]`` (mm) on a grid whose
    one-voxel steps along (i, j, k) are the columns of ``index_to_physical`` (``M = D diag(spacing)``).

    With ``G`` the derivative of ``u`` along the index axes (central differences in voxels,
    one-sided at the borders, as :func:`jacobian_determinant`), ``J = I + G M^-1``, so
    ``det J = det(M + G) / det M``: the same number as :func:`jacobian_determinant` of the field
    expressed in index axes, without making that copy, and computed slab by slab along k (the
    whole-volume gradients of a 160x192x224 field are nine 28 MB arrays). Returns ``[K, J, I]``
    float32. ``field`` may be a tensor or a NumPy array (e.g. a read-only view of an ITK image):
    each slab is copied to float32 as it is used."""
    if len(field.shape) != 4 or field.shape[-1] != 3:
        raise ValueError(f"field must be [K, J, I, 3], got {tuple(field.shape)}")
    M = torch.as_tensor(index_to_physical, dtype=torch.float64)
    scale = float(1.0 / torch.linalg.det(M))
    M = M.float()
    K = field.shape[0]
    out = torch.empty(field.shape[:3], dtype=torch.float32)
    for k0 in range(0, K, SLAB_SLICES):
        k1 = min(k0 + SLAB_SLICES, K)
        lo, hi = max(k0 - 1, 0), min(k1 + 1, K)  # one slice of halo where there is one
        block = field[lo:hi].float() if isinstance(field, torch.Tensor) else torch.from_numpy(np.array(field[lo:hi], dtype=np.float32))
        grads = torch.gradient(block, dim=(0, 1, 2))  # along k, j, i: [k, J, I, 3] each (component r last)
        g_k, g_j, g_i = (g[k0 - lo:k0 - lo + (k1 - k0)] for g in grads)
        # A[r][c] = M[r][c] + dU_r / d index_c, index order (i, j, k)
        a = [[g_i[..., r] + M[r, 0], g_j[..., r] + M[r, 1], g_k[..., r] + M[r, 2]] for r in range(3)]
        det = a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
        det -= a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
        det += a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0])
        out[k0:k1] = det * scale
    return out


DEFINITION = "det(I + grad u), central differences; folding = det <= 0; std of log det over det > 0"


def folding_statistics(determinant: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
    """Fraction of voxels with det J <= 0, and std of log det J over voxels with det J > 0.

    The field is not clipped or smoothed before counting: folding is reported, not hidden.
    """
    det = determinant.flatten() if mask is None else determinant[mask.bool()].flatten()
    if not det.numel():
        return {"folding_fraction": 0.0, "folded_voxels": 0, "std_log_jacobian": 0.0, "jacobian_min": 1.0, "jacobian_max": 1.0, "definition": DEFINITION}
    folded = int((det <= 0).sum())
    above = det > 0
    positive = det if bool(above.all()) else det[above]  # no copy of the whole field in the usual case, nothing folded
    low, high = torch.aminmax(det)
    return {
        "folding_fraction": folded / det.numel(),
        "folded_voxels": folded,
        "std_log_jacobian": float(torch.log(positive).std()) if positive.numel() > 1 else 0.0,
        "jacobian_min": float(low),
        "jacobian_max": float(high),
        "definition": DEFINITION,
    }
