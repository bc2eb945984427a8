"""The demo's sample brain: the MNI ICBM152 2009a T1 template that ships inside nilearn's wheel.

nilearn (BSD licence) carries a 1 mm copy of the ICBM 2009a nonlinear symmetric T1 average,
already brain-extracted and stored as 8-bit, in ``nilearn/datasets/data/``. It is found on
disk through the installed package's location: nilearn is not imported (that is slow) and
none of its fetchers is called (they download). The template's copyright and licence notice
is in ``Resources/NOTICE-MNI152.txt``; anyone passing the volume on passes that notice on.

The wheel holds no separate brain mask (nilearn's ``load_mni152_brain_mask`` derives one by
thresholding the T1), so the mask here is derived the same way: the non-zero voxels of the
T1, holes filled, largest connected piece kept.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import VoxelMorphRegError

TEMPLATE_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
TEMPLATE_NAME = "MNI ICBM152 2009a nonlinear symmetric T1 template (copy shipped with nilearn)"
NOTICE_NAME = "NOTICE-MNI152.txt"
NOTICE_FILE = Path(__file__).resolve().parents[2] / "Resources" / NOTICE_NAME  # checkout / Slicer module
# The notice's own words, used when Resources/ is not installed (e.g. a wheel without data files),
# so that the copies the demo writes always travel with it.
TEMPLATE_NOTICE = (
    "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal\n"
    "Neurological Institute, McGill University. Permission to use, copy, modify, and distribute\n"
    "this software and its documentation for any purpose and without fee is hereby granted,\n"
    "provided that the above copyright notice appear in all copies. The authors and McGill\n"
    "University make no representations about the suitability of this software for any\n"
    "purpose. It is provided \"as is\" without express or implied warranty. The authors are not\n"
    "responsible for any data loss, equipment damage, property loss, or injury to subjects or\n"
    "patients resulting from the use or misuse of this software package.\n"
)

_INSTALL_HINT = "install nilearn (`pip install nilearn`, the project's 'demo' extra), which ships the sample brain; nothing is downloaded at run time"


def template_path() -> Path:
    """Path of the T1 template inside the installed nilearn package, or a one-line error."""
    try:
        spec = importlib.util.find_spec("nilearn")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise VoxelMorphRegError(f"the demo's sample brain is not available: {_INSTALL_HINT}")
    for root in spec.submodule_search_locations:
        path = Path(root) / "datasets" / "data" / TEMPLATE_FILE
        if path.is_file():
            return path
    raise VoxelMorphRegError(f"the demo's sample brain ({TEMPLATE_FILE}) is missing from the installed nilearn; reinstall it: {_INSTALL_HINT}")


def brain_mask_from_t1(t1: sitk.Image) -> sitk.Image:
    """UInt8 mask of a brain-extracted T1: non-zero voxels, holes filled, largest component."""
    mask = sitk.Cast(t1 > 0, sitk.sitkUInt8)
    mask = sitk.BinaryFillhole(mask, fullyConnected=False, foregroundValue=1)
    components = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True)
    return sitk.Cast(components == 1, sitk.sitkUInt8)


def crop_to_mask(image: sitk.Image, mask: sitk.Image, margin_mm: float) -> tuple[sitk.Image, sitk.Image]:
    """Crop both images to the mask's bounding box grown by ``margin_mm`` (clamped to the image)."""
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.Execute(mask)
    if not shape.HasLabel(1):
        raise VoxelMorphRegError("sample brain mask is empty")
    box = shape.GetBoundingBox(1)  # (i, j, k, size_i, size_j, size_k)
    start = np.array(box[:3])
    stop = start + np.array(box[3:])
    pad = np.ceil(margin_mm / np.array(image.GetSpacing())).astype(int)
    start = np.maximum(start - pad, 0)
    stop = np.minimum(stop + pad, np.array(image.GetSize()))
    size = [int(n) for n in stop - start]
    index = [int(n) for n in start]
    return sitk.RegionOfInterest(image, size, index), sitk.RegionOfInterest(mask, size, index)


def resample_isotropic(image: sitk.Image, mask: sitk.Image, spacing: float) -> tuple[sitk.Image, sitk.Image]:
    """Both images on an isotropic grid of ``spacing`` mm over the same field of view and direction.

    The image is smoothed first (sigma = half the new spacing) to avoid aliasing when coarsening.
    """
    old_spacing = np.array(image.GetSpacing())
    old_size = np.array(image.GetSize())
    new_size = [max(2, int(round(n))) for n in old_size * old_spacing / spacing]
    grid = sitk.Image(new_size, sitk.sitkFloat32)
    grid.SetSpacing([float(spacing)] * 3)
    grid.SetDirection(image.GetDirection())
    # Keep the outer edges of the field of view where they were.
    first_edge = np.array(image.TransformContinuousIndexToPhysicalPoint([-0.5] * 3))
    direction = np.array(image.GetDirection()).reshape(3, 3)
    grid.SetOrigin((first_edge + direction @ np.full(3, spacing / 2)).tolist())
    if spacing > float(old_spacing.min()):
        image = sitk.SmoothingRecursiveGaussian(image, spacing / 2)
    identity = sitk.Transform(3, sitk.sitkIdentity)
    resampled = sitk.Resample(image, grid, identity, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    mask_fraction = sitk.Resample(sitk.Cast(mask, sitk.sitkFloat32), grid, identity, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    new_mask = sitk.Cast(mask_fraction >= 0.5, sitk.sitkUInt8)
    return sitk.Mask(resampled, new_mask), new_mask


def load_template(margin_mm: float = 8.0, spacing: float | None = None, high_percentile: float = 99.5) -> tuple[sitk.Image, sitk.Image]:
    """The sample brain as ``(image, mask)``: skull-stripped T1 in [0, 1] and its UInt8 brain mask.

    * ``image``: float32, zero outside the mask, scaled so the ``high_percentile`` of brain
      voxels is 1 (brighter voxels clipped), cropped to the brain's bounding box plus
      ``margin_mm``. Geometry as in the file (1 mm, stored RAS: direction diag(-1, -1, 1) in
      ITK's LPS world), so physical points are MNI coordinates with x and y negated.
    * ``spacing``: resample both to this isotropic spacing (mm), e.g. 3 for quick tests.
    """
    path = template_path()
    try:
        t1 = sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkFloat32)
    except RuntimeError:
        raise VoxelMorphRegError(f"{path}: the demo's sample brain cannot be read; reinstall nilearn") from None
    mask = brain_mask_from_t1(t1)
    t1, mask = crop_to_mask(t1, mask, margin_mm)
    values = sitk.GetArrayViewFromImage(t1)[sitk.GetArrayViewFromImage(mask) > 0]
    high = float(np.percentile(values, high_percentile))
    if high <= 0:
        raise VoxelMorphRegError(f"{path}: the sample brain is empty")
    image = sitk.Clamp(t1 / high, sitk.sitkFloat32, 0.0, 1.0)
    image = sitk.Mask(image, mask)
    if spacing is not None:
        image, mask = resample_isotropic(image, mask, float(spacing))
        image = sitk.Clamp(image, sitk.sitkFloat32, 0.0, 1.0)
    return sitk.Cast(image, sitk.sitkFloat32), mask


def notice_text() -> str:
    """The template's copyright/licence notice: ``Resources/NOTICE-MNI152.txt`` where installed, else its core text."""
    for path in (NOTICE_FILE, Path(sys.prefix) / "share" / "voxelmorphreg" / NOTICE_NAME):
        try:
            return path.read_text(encoding="utf-8")
        except OSError:
            continue
    return f"Sample brain: {TEMPLATE_NAME}, file {TEMPLATE_FILE}.\n\n{TEMPLATE_NOTICE}"
