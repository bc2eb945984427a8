"""The grid the network sees: the fixed image's field of view in the model's orientation and spacing.

The model was trained on volumes in one orientation (e.g. LIA) and one spacing (e.g. 2 mm);
any fixed image is brought to that frame, covering its own physical bounding box, with sizes
rounded up to what the U-Net can divide.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import SimpleITK as sitk


def direction_from_orientation(orientation: str) -> np.ndarray:
    """3x3 LPS direction matrix (columns = i, j, k axes) of an orientation code such as ``LIA``.

    Each letter names the direction toward which the i, j, k index grows, as SimpleITK's
    ``DICOMOrientImageFilter`` reads it: ``LIA`` is i toward Left, j toward Inferior, k toward
    Anterior (the neurite-OASIS/VoxelMorph space), ``LPS`` the identity matrix.
    """
    return np.array(sitk.DICOMOrientImageFilter.GetDirectionCosinesFromOrientation(orientation)).reshape(3, 3)


def orientation_of(image: sitk.Image) -> str:
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def physical_corners(image: sitk.Image) -> np.ndarray:
    """The 8 outer corners (voxel edges, not centres) of ``image`` in physical LPS mm."""
    size = np.array(image.GetSize())
    corners = []
    for pick in itertools.product((0, 1), repeat=3):
        index = np.where(pick, size - 0.5, -0.5)
        corners.append(image.TransformContinuousIndexToPhysicalPoint(index.tolist()))
    return np.array(corners)


def model_grid(fixed: sitk.Image, spacing, orientation: str, divisor: int) -> sitk.Image:
    """An empty float32 image: the model frame covering ``fixed``'s physical extent.

    Size per axis is the smallest multiple of ``divisor`` that covers the extent; the grid is
    centred on the extent, so padding is split evenly on both sides.
    """
    direction = direction_from_orientation(orientation)
    spacing = np.asarray(spacing, dtype=float)
    corners = physical_corners(fixed) @ direction  # coordinates along the model axes
    low, high = corners.min(axis=0), corners.max(axis=0)
    extent = high - low
    voxels = [max(1, math.ceil(e / s - 1e-6)) for e, s in zip(extent, spacing)]  # the tolerance absorbs rounding
    size = np.array([math.ceil(n / divisor) * divisor for n in voxels])
    centre = (low + high) / 2
    first_centre = centre - (size - 1) / 2 * spacing  # along model axes
    grid = sitk.Image([int(n) for n in size], sitk.sitkFloat32)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(direction.flatten().tolist())
    grid.SetOrigin((direction @ first_centre).tolist())
    return grid


def resample_to(image: sitk.Image, reference: sitk.Image, transform: sitk.Transform | None = None, labels: bool = False, default: float = 0.0) -> sitk.Image:
    """``image`` sampled at ``reference``'s voxels through ``transform`` (fixed -> moving points)."""
    transform = transform if transform is not None else sitk.Transform(3, sitk.sitkIdentity)
    interpolator = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    pixel = image.GetPixelID() if labels else sitk.sitkFloat32
    return sitk.Resample(image, reference, transform, interpolator, default, pixel)


def normalise_intensity(array: np.ndarray, low_percentile: float = 0.5, high_percentile: float = 99.5) -> np.ndarray:
    """Clip to robust percentiles and scale to [0, 1] (what the network was trained on)."""
    array = np.asarray(array, dtype=np.float32)
    low, high = np.percentile(array, [low_percentile, high_percentile])
    if high <= low:
        low, high = float(array.min()), float(array.max())
    if high <= low:
        return np.zeros_like(array)
    return np.clip((array - low) / (high - low), 0.0, 1.0).astype(np.float32)
