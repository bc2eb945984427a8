"""Brain-focused registration of whole-head scans (``--brain-mask auto``, the default).

A whole head brings scalp, skull, eyes and often the neck into the field of view: tissue the
network was not asked to align and that costs accuracy and time. With a brain mask for each scan
(:mod:`.brain_mask`), the affine runs on the two brains (its metric and its starting point, the
brains' centres of mass), the model grid covers the fixed brain plus a margin instead of the whole
field of view, and the network and the refinement see brains. The velocity is tapered outside the
fixed brain (1 up to ``TAPER_START_MM``, a cosine down to 0 at ``TAPER_END_MM``), so the
deformation fades smoothly into the affine alone: the field on the fixed image's full grid is
finite and smooth everywhere, with no edge at the mask or the model grid (whose margin is wider
than the taper).

Two scans that are already skull-stripped (``auto`` recognises them) run exactly as
``--brain-mask off``: nothing is masked, cut or tapered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

from ..errors import VoxelMorphRegError
from ..image.displacement import sub_grid
from .brain_mask import BrainMask, brain_mask, stripped_image

BRAIN_MASK_MODES = ("auto", "off")
TAPER_START_MM = 6.0
TAPER_END_MM = 18.0
GRID_MARGIN_MM = 24.0  # > TAPER_END_MM: the deformation is zero where the model grid ends


# A network mask smaller than this is no brain (a phantom, a scan of another body part): the pair
# is then registered as it is, with a warning.
MIN_BRAIN_ML = 150.0


@dataclass
class BrainFocus:
    mode: str
    fixed: BrainMask | None = None
    moving: BrainMask | None = None
    fallback: str | None = None  # why the masks were not used although asked for

    @property
    def used(self) -> bool:
        """True when the masks change the registration (at least one scan is a whole head)."""
        return self.fixed is not None and not (self.fixed.source == "stripped" and self.moving.source == "stripped")

    def describe(self) -> dict:
        report = {"mode": self.mode, "used": self.used}
        if self.fallback:
            report["fallback"] = self.fallback
        if self.fixed is not None:
            report["fixed"] = self.fixed.describe()
            report["moving"] = self.moving.describe()
            report["taper_mm"] = [TAPER_START_MM, TAPER_END_MM]
        return report


def focus_pair(fixed: sitk.Image, moving: sitk.Image, mode: str, model=None) -> BrainFocus:
    """The masks of both scans (``auto``), or none (``off``)."""
    if mode == "off":
        return BrainFocus(mode)
    if mode != "auto":
        raise ValueError(f"brain mask mode must be one of {BRAIN_MASK_MODES}, got {mode!r}")
    masks = []
    for role, image in (("fixed", fixed), ("moving", moving)):
        try:
            mask = brain_mask(image, "auto", model)
        except VoxelMorphRegError as exc:
            if "no brain found" not in str(exc):
                raise
            mask = None
        if mask is None or (mask.source == "network" and mask.volume_ml < MIN_BRAIN_ML):
            found = "no brain" if mask is None else f"only {mask.volume_ml:.0f} mL"
            return BrainFocus(mode, fallback=f"the brain mask of the {role} image found {found}; the images were registered as they are")
        masks.append(mask)
    return BrainFocus(mode, *masks)


def brains(focus: BrainFocus, fixed: sitk.Image, moving: sitk.Image) -> tuple[sitk.Image, sitk.Image]:
    """The two scans with everything outside their brain masks at background (float32)."""
    return stripped_image(fixed, focus.fixed.mask), stripped_image(moving, focus.moving.mask)


def brain_box(image: sitk.Image, mask: sitk.Image, margin_mm: float = GRID_MARGIN_MM):
    """Index box ``(low, high)`` (high exclusive) of ``mask``'s voxels on ``image``'s grid, grown by
    ``margin_mm``; it may reach beyond the grid."""
    statistics = sitk.LabelShapeStatisticsImageFilter()
    statistics.Execute(mask)
    x, y, z, sx, sy, sz = statistics.GetBoundingBox(1)
    grow = np.ceil(margin_mm / np.array(image.GetSpacing())).astype(int)
    return np.array([x, y, z]) - grow, np.array([x + sx, y + sy, z + sz]) + grow


def brain_region(image: sitk.Image, mask: sitk.Image, margin_mm: float = GRID_MARGIN_MM) -> sitk.Image:
    """An empty image on the box of :func:`brain_box` (the model grid is built over it, padded with
    background where it reaches beyond the image)."""
    low, high = brain_box(image, mask, margin_mm)
    return sub_grid(image, low, high - low)


def deformable_region(image: sitk.Image, mask: sitk.Image):
    """``(low, size)`` of the fixed grid outside which the tapered deformation is exactly zero: the
    brain's box grown by the grid margin (wider than the taper), clipped to the grid."""
    low, high = brain_box(image, mask)
    low = np.maximum(low, 0)
    high = np.minimum(high, np.array(image.GetSize()))
    return tuple(int(v) for v in low), tuple(int(v) for v in np.maximum(high - low, 0))


def velocity_taper(mask: sitk.Image, grid: sitk.Image) -> torch.Tensor:
    """``[1, 1, K, J, I]`` on ``grid``: 1 inside the brain and up to TAPER_START_MM outside it, a cosine
    down to 0 at TAPER_END_MM, 0 beyond."""
    on_grid = sitk.Resample(mask, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    distance = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(on_grid, insideIsPositive=False, squaredDistance=False, useImageSpacing=True))
    ramp = np.clip((distance - TAPER_START_MM) / (TAPER_END_MM - TAPER_START_MM), 0.0, 1.0)
    weight = 0.5 * (1 + np.cos(math.pi * ramp))
    return torch.from_numpy(weight.astype(np.float32))[None, None]


def apply_taper(velocity: torch.Tensor, taper: torch.Tensor | None) -> torch.Tensor:
    """``velocity`` ``[B, 3, ...]`` (on the model grid or a coarser one) times the taper brought to its size."""
    if taper is None:
        return velocity
    weight = taper.to(velocity.device, velocity.dtype)
    if weight.shape[2:] != velocity.shape[2:]:
        weight = torch.nn.functional.interpolate(weight, size=velocity.shape[2:], mode="trilinear", align_corners=False)
    return velocity * weight
