"""Affine pre-alignment with SimpleITK (Mattes mutual information, multi-resolution)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import VoxelMorphRegError


# The alignment works on block-averaged copies of the images at about this spacing (mm): a
# pre-alignment that the deformable stage refines gains nothing finer, and every level of
# the pyramid then costs a fraction of what it would on the full-resolution images.
WORKING_SPACING_MM = 3.0


def working_copy(image: sitk.Image, spacing_mm: float | None = None) -> sitk.Image:
    """``image`` averaged over blocks of voxels (``sitk.BinShrink``) to about ``spacing_mm``.

    Block averaging is its own anti-aliasing filter and keeps the physical extent; a voxel
    spacing already coarser than ``spacing_mm`` is left as it is, and no axis is shrunk below
    about 32 voxels (small images keep enough detail for the pyramid's coarser level).
    """
    spacing_mm = WORKING_SPACING_MM if spacing_mm is None else spacing_mm
    factors = [max(1, min(int(round(spacing_mm / s)), n // 32)) for s, n in zip(image.GetSpacing(), image.GetSize())]
    if all(f == 1 for f in factors):
        return image
    return sitk.BinShrink(image, factors)


def affine_register(fixed: sitk.Image, moving: sitk.Image, iterations: int = 100, sampling: float = 0.25, seed: int = 1) -> sitk.AffineTransform:
    """Affine transform mapping fixed physical points to moving ones (ITK's resampling direction).

    Starts from the alignment of the image moments (centres of mass), then a rigid stage at
    twice the working spacing and a full affine stage on a 2-1 pyramid of the working copies
    (see :func:`working_copy`; finer levels add seconds and little for a pre-alignment).
    """
    fixed = working_copy(sitk.Cast(fixed, sitk.sitkFloat32))
    moving = working_copy(sitk.Cast(moving, sitk.sitkFloat32))
    try:
        initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS)
    except RuntimeError:
        initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY)
    rigid = _run(fixed, moving, initial, iterations, sampling, seed, shrink=(2,))
    affine = sitk.AffineTransform(3)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    result = _run(fixed, moving, affine, iterations, sampling, seed, shrink=(2, 1))
    # Mutual information on few voxels (a small field of view) can run off into a shrunken or
    # sheared optimum: a stage is kept only if it scores better than what it started from, and
    # the affine only with plausible scales (a pre-alignment of two heads, not a zoom).
    scores = [(_metric(fixed, moving, t, sampling, seed), n, t) for n, t in enumerate((_as_affine(initial), affine, result))]
    singular = np.linalg.svd(np.array(result.GetMatrix()).reshape(3, 3), compute_uv=False)
    if not (MIN_SCALE <= singular.min() and singular.max() <= MAX_SCALE):
        scores = scores[:2]
    return min(scores, key=lambda entry: (entry[0], -entry[1]))[2]


# Scales (singular values of the matrix) an affine pre-alignment may find; beyond them it is refused.
MIN_SCALE, MAX_SCALE = 0.67, 1.5


def _as_affine(transform) -> sitk.AffineTransform:
    affine = sitk.AffineTransform(3)
    affine.SetCenter(transform.GetCenter())
    affine.SetMatrix(transform.GetMatrix())
    affine.SetTranslation(transform.GetTranslation())
    return affine


def _metric(fixed, moving, transform, sampling, seed) -> float:
    """Mattes mutual information (lower is better) of ``transform`` on the working copies, full resolution."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.REGULAR)
    method.SetMetricSamplingPercentage(sampling, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetInitialTransform(transform, inPlace=False)
    try:
        return float(method.MetricEvaluate(fixed, moving))
    except RuntimeError:  # no overlap left
        return float("inf")


def _run(fixed, moving, transform, iterations, sampling, seed, shrink):
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    # A regular grid of samples with a fixed seed for its jitter: the same images give the same
    # transform. (Seed 0 is SimpleITK's sitkWallClock, i.e. a new seed on every run.)
    if seed == sitk.sitkWallClock:
        raise ValueError("seed 0 means 'from the wall clock' in SimpleITK; use a positive seed")
    method.SetMetricSamplingStrategy(method.REGULAR)
    method.SetMetricSamplingPercentage(sampling, seed)
    method.SetInterpolator(sitk.sitkLinear)
    # Scales from physical shift make a unit step move the image by about one voxel of the
    # working copy; the first step is kept near 1 mm whatever the working spacing (a 3 mm
    # step overshoots and has been seen to land on a wrong optimum).
    first_step = 1.0 / max(fixed.GetSpacing())
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=first_step, minStep=1e-4, numberOfIterations=iterations, relaxationFactor=0.5)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(shrink))
    method.SetSmoothingSigmasPerLevel([s / 2 for s in shrink])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(transform, inPlace=False)
    try:
        result = method.Execute(fixed, moving)
    except RuntimeError as exc:
        raise VoxelMorphRegError(f"affine pre-alignment failed ({str(exc).strip().splitlines()[-1]}); try --no-affine if the images are already aligned") from None
    if isinstance(result, sitk.CompositeTransform):
        result = result.GetNthTransform(result.GetNumberOfTransforms() - 1)
    kind = type(transform)
    out = kind(result) if kind is sitk.Euler3DTransform else sitk.AffineTransform(result)
    return out
