"""Affine pre-alignment with SimpleITK (Mattes mutual information, multi-resolution)."""

from __future__ import annotations

import SimpleITK as sitk

from ..errors import VoxelMorphRegError


def affine_register(fixed: sitk.Image, moving: sitk.Image, iterations: int = 100, sampling: float = 0.25, seed: int = 1) -> sitk.AffineTransform:
    """Affine transform mapping fixed physical points to moving ones (ITK's resampling direction).

    Starts from the alignment of the image moments (centres of mass), then a rigid stage on
    images shrunk 4 times and a full affine stage on a 4-2 pyramid of smoothed, shrunk copies
    (full resolution adds seconds and little for a pre-alignment the deformable stage refines).
    """
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    try:
        initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS)
    except RuntimeError:
        initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY)
    rigid = _run(fixed, moving, initial, iterations, sampling, seed, shrink=(4,))
    affine = sitk.AffineTransform(3)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    return _run(fixed, moving, affine, iterations, sampling, seed, shrink=(4, 2))


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
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=iterations, relaxationFactor=0.5)
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
