"""Displacement fields in physical space: voxel flows to LPS millimetres, composition with the affine.

Conventions (GEOMETRY.md): a fixed-to-moving field ``u`` on the fixed grid, LPS mm, with
``T(p) = p + u(p)`` mapping a fixed physical point to the moving one -- what
``sitk.DisplacementFieldTransform`` stores and what ``sitk.Resample(moving, fixed, T)`` uses.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def index_to_physical_matrix(image: sitk.Image) -> np.ndarray:
    """``M = D @ diag(spacing)``: physical offset (LPS mm) of a one-voxel step along (i, j, k)."""
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    return direction @ np.diag(image.GetSpacing())


def flow_to_physical(flow_kji: np.ndarray, grid: sitk.Image) -> np.ndarray:
    """Voxel flow ``[3(k,j,i), K, J, I]`` on ``grid`` -> physical field ``[K, J, I, 3(x,y,z LPS)]`` in mm."""
    flow_ijk = np.moveaxis(np.asarray(flow_kji, dtype=np.float64)[::-1], 0, -1)
    return flow_ijk @ index_to_physical_matrix(grid).T


def physical_to_flow(field_xyz: np.ndarray, grid: sitk.Image) -> np.ndarray:
    """Inverse of :func:`flow_to_physical`: ``[K, J, I, 3]`` mm -> ``[3(k,j,i), K, J, I]`` voxels."""
    flow_ijk = np.asarray(field_xyz, dtype=np.float64) @ np.linalg.inv(index_to_physical_matrix(grid)).T
    return np.moveaxis(flow_ijk, -1, 0)[::-1].copy()


def vector_image(field_xyz: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """``[K, J, I, 3]`` array -> float64 vector image with ``reference``'s geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(field_xyz, dtype=np.float64), isVector=True)
    image.CopyInformation(reference)
    return image


def physical_points(image: sitk.Image) -> np.ndarray:
    """LPS position ``[K, J, I, 3]`` of every voxel centre of ``image``."""
    size = image.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in size[::-1]), indexing="ij")
    ijk = np.stack([i, j, k], axis=-1)
    return ijk @ index_to_physical_matrix(image).T + np.array(image.GetOrigin())


def affine_parts(transform: sitk.Transform | None) -> tuple[np.ndarray, np.ndarray]:
    """``(A, b)`` with ``transform(p) = A p + b`` for an affine-like transform (identity for None)."""
    if transform is None or not hasattr(transform, "GetMatrix"):
        if transform is not None and transform.GetTransformEnum() != sitk.sitkIdentity:
            raise TypeError(f"not an affine transform: {transform.GetName()}")
        return np.eye(3), np.zeros(3)
    affine = transform
    matrix = np.array(affine.GetMatrix()).reshape(3, 3)
    centre = np.array(affine.GetCenter())
    translation = np.array(affine.GetTranslation())
    return matrix, centre + translation - matrix @ centre


def compose_on_fixed(deformable: sitk.Image | None, affine: sitk.Transform | None, fixed: sitk.Image) -> np.ndarray:
    """Field ``[K, J, I, 3]`` of ``p -> A(p + d(p)) - p`` on ``fixed``'s grid: one field for both stages.

    ``deformable`` is the physical field ``d`` (vector image on any grid covering the fixed
    image, e.g. the model grid), ``affine`` the fixed-to-moving affine ``A``.
    """
    points = physical_points(fixed)
    if deformable is not None:
        sampled = sitk.Resample(deformable, fixed, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
        moved = points + sitk.GetArrayFromImage(sampled)
    else:
        moved = points
    matrix, offset = affine_parts(affine)
    return (moved @ matrix.T + offset - points).astype(np.float64)


def compose_inverse_on_moving(inverse_deformable: sitk.Image | None, affine: sitk.Transform | None, moving: sitk.Image) -> np.ndarray:
    """Field ``[K, J, I, 3]`` of the moving-to-fixed map ``q -> r + d_inv(r) - q``, ``r = A^-1(q)``, on ``moving``'s grid."""
    points = physical_points(moving)
    matrix, offset = affine_parts(affine)
    inverse_matrix = np.linalg.inv(matrix)
    back = (points - offset) @ inverse_matrix.T
    if inverse_deformable is not None:
        inverse_affine = sitk.AffineTransform(3)
        inverse_affine.SetMatrix(inverse_matrix.flatten().tolist())
        inverse_affine.SetTranslation((-inverse_matrix @ offset).tolist())
        sampled = sitk.Resample(inverse_deformable, moving, inverse_affine, sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
        back = back + sitk.GetArrayFromImage(sampled)
    return (back - points).astype(np.float64)


def displacement_transform(field: sitk.Image) -> sitk.DisplacementFieldTransform:
    """A ``DisplacementFieldTransform`` over a copy of ``field`` (the transform takes its buffer)."""
    return sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
