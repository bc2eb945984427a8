"""Bring a volume onto the model grid the way both ``register`` and ``train`` do."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .model_grid import model_grid, normalise_intensity, resample_to


def grid_for(fixed: sitk.Image, config) -> sitk.Image:
    """The model grid (see :func:`model_grid`) of a config with ``spacing``/``orientation``/U-Net depth."""
    divisor = 2 ** (len(config.encoder_features) - 1)
    return model_grid(fixed, config.spacing, config.orientation, divisor)


def image_on_grid(image: sitk.Image, grid: sitk.Image, transform: sitk.Transform | None, config) -> np.ndarray:
    """``image`` resampled onto ``grid`` through ``transform`` and normalised, as ``[K, J, I]`` float32."""
    array = sitk.GetArrayFromImage(resample_to(image, grid, transform))
    intensity = config.intensity
    return normalise_intensity(array, intensity.get("low", 0.5), intensity.get("high", 99.5))


def labels_on_grid(labels: sitk.Image, grid: sitk.Image, transform: sitk.Transform | None) -> np.ndarray:
    return sitk.GetArrayFromImage(resample_to(labels, grid, transform, labels=True)).astype(np.int32)
