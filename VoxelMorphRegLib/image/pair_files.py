"""A pair's files read and checked: the first stage of ``register`` (torch-free).

Torch-free on purpose: the command line reads the images while the registration engine (torch,
MONAI) is still being imported on another thread, and batch registration reads the next pairs on
a thread while the current one computes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import SimpleITK as sitk

from .io import read_labels, read_volume


@dataclass
class PairImages:
    """The images of one pair, read and checked (:func:`read_pair`), and where they came from."""

    fixed: sitk.Image
    moving: sitk.Image
    moving_labels: sitk.Image | None
    fixed_labels: sitk.Image | None
    inputs: dict  # fixed, moving, moving_labels, fixed_labels: the paths as given (None where absent)
    seconds: float  # reading time


def read_pair(fixed_path, moving_path, moving_labels=None, fixed_labels=None) -> PairImages:
    """Read and check a pair's files (one-line errors naming the file)."""
    started = time.perf_counter()
    fixed = read_volume(fixed_path, name=f"fixed image {fixed_path}")
    moving = read_volume(moving_path, name=f"moving image {moving_path}")
    moving_label_image = read_labels(moving_labels, reference=moving, name=f"moving labels {moving_labels}") if moving_labels else None
    fixed_label_image = read_labels(fixed_labels, reference=fixed, name=f"fixed labels {fixed_labels}") if fixed_labels else None
    inputs = {"fixed": str(fixed_path), "moving": str(moving_path), "moving_labels": moving_labels and str(moving_labels), "fixed_labels": fixed_labels and str(fixed_labels)}
    return PairImages(fixed, moving, moving_label_image, fixed_label_image, inputs, time.perf_counter() - started)
