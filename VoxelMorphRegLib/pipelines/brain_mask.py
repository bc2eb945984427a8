"""A brain mask for any head scan: the bundled brain extraction network, or the scan itself when it is already stripped.

The network runs on a coarse grid in its own orientation covering the scan's field of view: the
scan is sampled at half the network's spacing and averaged down (as the training images were
rendered), the network predicts the brain's signed distance, and that distance is brought back to
the scan's own grid by linear interpolation and thresholded. What is kept is the largest connected
component with its holes filled: one piece, no holes, on the scan's grid (uint8, 1 inside).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..brain_mask_model import BrainMaskConfig, load_brain_mask_model
from ..errors import VoxelMorphRegError
from ..model_resolution import bundled_brain_mask_model_path
from ..tensor.head_synthesis import normalise_intensity

# An image counts as already skull-stripped when at least this share of its voxels hold its
# minimum (the zeroed background) and the rest is no larger than a brain with its CSF can be.
STRIPPED_BACKGROUND_SHARE = 0.02
STRIPPED_MAX_VOLUME_ML = 2800.0


@dataclass
class BrainMask:
    mask: sitk.Image  # uint8 on the scan's grid, 1 inside
    source: str  # "network" or "stripped" (the scan's own non-background voxels)
    volume_ml: float
    seconds: float

    def describe(self) -> dict:
        return {"source": self.source, "volume_ml": round(self.volume_ml, 1), "seconds": round(self.seconds, 3)}


_LOADED: dict = {}


def load_mask_network(path=None):
    """``(network, config)`` of a brain mask model file (the bundled one by default), loaded once per process."""
    path = Path(path) if path else bundled_brain_mask_model_path()
    key = (str(path.resolve()), path.stat().st_mtime_ns if path.exists() else 0)
    if key not in _LOADED:
        network, config, _ = load_brain_mask_model(path)
        _LOADED.clear()
        _LOADED[key] = (network, config)
    return _LOADED[key]


def looks_stripped(image: sitk.Image) -> bool:
    """True for a scan whose background is zeroed around a brain-sized rest (a skull-stripped brain):
    at least STRIPPED_BACKGROUND_SHARE of its voxels hold the background (its minimum, or 0 where
    the brain holds negative values too) and the rest is at most STRIPPED_MAX_VOLUME_ML."""
    array = sitk.GetArrayViewFromImage(image)
    background = max(np.count_nonzero(array <= array.min()), np.count_nonzero(array == 0))
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    return background >= STRIPPED_BACKGROUND_SHARE * array.size and (array.size - background) * voxel_ml <= STRIPPED_MAX_VOLUME_ML


# The network learnt heads inside a 256 mm cube of air (64 voxels of 4 mm): a scan whose field of
# view hugs the head is given the same surroundings, at least NETWORK_MARGIN_MM of background
# around its field of view and at least NETWORK_MIN_EXTENT_MM per axis.
NETWORK_MARGIN_MM = 0.0
NETWORK_MIN_EXTENT_MM = 256.0


def network_grids(image: sitk.Image, config: BrainMaskConfig, divisor: int):
    """The network's grid over ``image``'s field of view (with the margin above), and the grid at half
    its spacing whose 2x2x2 blocks average onto it."""
    from ..image.model_grid import direction_from_orientation, physical_corners

    direction = direction_from_orientation(config.orientation)
    corners = physical_corners(image) @ direction
    low, high = corners.min(axis=0), corners.max(axis=0)
    extent = np.maximum(high - low + 2 * NETWORK_MARGIN_MM, NETWORK_MIN_EXTENT_MM)
    voxels = np.ceil(extent / config.spacing / divisor).astype(int) * divisor
    first = (low + high) / 2 - (voxels - 1) / 2 * config.spacing
    coarse = sitk.Image([int(n) for n in voxels], sitk.sitkFloat32)
    coarse.SetSpacing([config.spacing] * 3)
    coarse.SetDirection(direction.flatten().tolist())
    coarse.SetOrigin((direction @ first).tolist())
    fine = sitk.Image([2 * int(n) for n in voxels], sitk.sitkFloat32)
    fine.SetSpacing([config.spacing / 2] * 3)
    fine.SetDirection(coarse.GetDirection())
    fine.SetOrigin((np.array(coarse.GetOrigin()) - direction @ np.full(3, config.spacing / 4)).tolist())
    return coarse, fine


def predict_distance(image: sitk.Image, network, config: BrainMaskConfig) -> sitk.Image:
    """The network's signed distance to the brain's surface (mm, negative inside) on its own coarse grid."""
    coarse, fine = network_grids(image, config, network.divisor)
    source = sitk.Cast(image, sitk.sitkFloat32)
    if min(image.GetSpacing()) < config.spacing / 4:  # finer than a quarter of the network's voxel: smooth before sampling at half of it
        source = sitk.SmoothingRecursiveGaussian(source, [max(0.01, (config.spacing / 4 - s) / 2) for s in image.GetSpacing()])
    sampled = torch.from_numpy(sitk.GetArrayFromImage(sitk.Resample(source, fine, sitk.Transform(), sitk.sitkLinear, float("nan"), sitk.sitkFloat32)))[None, None]
    inside = ~torch.isnan(sampled)
    low = float(sampled[inside].min()) if bool(inside.any()) else 0.0
    tensor = torch.nan_to_num(sampled, nan=low) - low  # beyond the scan: its background
    pooled = torch.nn.functional.avg_pool3d(tensor, 2)
    covered = torch.nn.functional.avg_pool3d(inside.float(), 2) > 0.99
    with torch.inference_mode():  # the intensity scale from the scan's own field of view, not the margin's air
        distance = network(normalise_intensity(pooled, covered if bool(covered.any()) else None))[0, 0].numpy()
    out = sitk.GetImageFromArray(distance.astype(np.float32))
    out.CopyInformation(coarse)
    return out


def mask_from_distance(distance: sitk.Image, image: sitk.Image, threshold_mm: float = 0.0) -> sitk.Image:
    """The mask ``distance < threshold_mm`` on ``image``'s grid, one piece without holes.

    The coarse distance is cleaned first (its largest piece, holes filled: a distance pushed outside
    elsewhere, inside in the holes), and only the box of ``image``'s grid around that piece (plus
    two coarse voxels) is interpolated and cleaned at full resolution: everything beyond it is
    outside. On a 256^3 head that box is about a quarter of the grid."""
    coarse = clean_mask(distance < threshold_mm)
    values = sitk.GetArrayFromImage(distance)
    inside = sitk.GetArrayViewFromImage(coarse) > 0
    values = np.where(inside, np.minimum(values, threshold_mm - 1e-3), np.maximum(values, threshold_mm + 1e-3)).astype(np.float32)
    cleaned = sitk.GetImageFromArray(values)
    cleaned.CopyInformation(distance)
    out = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
    k, j, i = np.nonzero(inside)
    if not k.size:
        result = sitk.GetImageFromArray(out)
        result.CopyInformation(image)
        return result
    corners = []
    for ci in (i.min() - 2, i.max() + 2):
        for cj in (j.min() - 2, j.max() + 2):
            for ck in (k.min() - 2, k.max() + 2):
                corners.append(image.TransformPhysicalPointToContinuousIndex(distance.TransformContinuousIndexToPhysicalPoint((float(ci), float(cj), float(ck)))))
    corners = np.array(corners)
    low = np.maximum(np.floor(corners.min(axis=0)).astype(int), 0)
    high = np.minimum(np.ceil(corners.max(axis=0)).astype(int) + 1, np.array(image.GetSize()))
    if np.any(high <= low):
        result = sitk.GetImageFromArray(out)
        result.CopyInformation(image)
        return result
    from ..image.displacement import sub_grid

    box = sub_grid(image, low, high - low)
    fine = sitk.Resample(cleaned, box, sitk.Transform(), sitk.sitkLinear, threshold_mm + 1.0, sitk.sitkFloat32) < threshold_mm
    out[low[2]:high[2], low[1]:high[1], low[0]:high[0]] = sitk.GetArrayFromImage(clean_mask(fine))  # a copy: a view of a temporary image reads freed memory
    result = sitk.GetImageFromArray(out)
    result.CopyInformation(image)
    return result


def clean_mask(mask: sitk.Image) -> sitk.Image:
    """The largest connected piece of a binary mask, its holes filled (uint8)."""
    components = sitk.ConnectedComponent(mask, True)
    largest = sitk.RelabelComponent(components, sortByObjectSize=True) == 1
    return sitk.Cast(sitk.BinaryFillhole(largest, fullyConnected=False, foregroundValue=1), sitk.sitkUInt8)


def brain_mask(image: sitk.Image, mode: str = "network", model=None) -> BrainMask:
    """The brain mask of ``image`` on its own grid.

    ``mode``: "network" always runs the network; "auto" first asks :func:`looks_stripped` and then
    keeps the scan's own non-background voxels.
    """
    started = time.perf_counter()
    if mode == "auto" and looks_stripped(image):
        array = sitk.GetArrayViewFromImage(image)
        background = 0 if np.count_nonzero(array == 0) > np.count_nonzero(array <= array.min()) else array.min()
        mask = sitk.GetImageFromArray((array != background).astype(np.uint8))
        mask.CopyInformation(image)
        source = "stripped"  # the scan's own foreground, as it is
    else:
        network, config = load_mask_network(model)
        mask, source = mask_from_distance(predict_distance(image, network, config), image, config.threshold_mm), "network"
    voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    volume = voxels * float(np.prod(image.GetSpacing())) / 1000.0
    if voxels == 0:
        raise VoxelMorphRegError("no brain found in the image (the brain mask is empty); is it a head scan? try --brain-mask off")
    return BrainMask(mask, source, volume, time.perf_counter() - started)


def stripped_image(image: sitk.Image, mask: sitk.Image) -> sitk.Image:
    """``image`` with every voxel outside ``mask`` set to the image's minimum (its pixel type kept)."""
    array = sitk.GetArrayFromImage(image)
    low = array.min()
    out = sitk.GetImageFromArray(np.where(sitk.GetArrayViewFromImage(mask) > 0, array, min(low, 0)).astype(array.dtype))
    out.CopyInformation(image)
    return out
