"""Two contrasts: told apart on the model grid, and registered by the optimisation alone."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

from conftest import blob_volume
from VoxelMorphRegLib.contract import RegisterOptions
from VoxelMorphRegLib.pipelines.contrast_check import DIFFERENT_BELOW, contrast_decision, optimisation_refinement
from VoxelMorphRegLib.pipelines.loaded_model import DEFAULT_NONE_REFINEMENT
from VoxelMorphRegLib.pipelines.register import register_images


def _inverted(image: sitk.Image) -> sitk.Image:
    """The same anatomy in another contrast: bright where it was dark inside the object, background kept at 0."""
    array = sitk.GetArrayFromImage(image)
    inside = array > 0.05
    out = np.where(inside, 1.2 - array, 0).astype(np.float32)
    result = sitk.GetImageFromArray(out)
    result.CopyInformation(image)
    return result


def test_signed_local_correlation_tells_contrasts_apart():
    fixed = torch.from_numpy(sitk.GetArrayFromImage(blob_volume(size=(48, 48, 48))))[None, None]
    moving = torch.from_numpy(sitk.GetArrayFromImage(blob_volume(size=(48, 48, 48), seed=4)))[None, None]
    inverted = torch.from_numpy(sitk.GetArrayFromImage(_inverted(blob_volume(size=(48, 48, 48), seed=4))))[None, None]
    same = contrast_decision(fixed, moving)
    other = contrast_decision(fixed, inverted)
    assert same["signed_local_ncc"] > DIFFERENT_BELOW and not same["different"]
    assert other["signed_local_ncc"] < DIFFERENT_BELOW and other["different"]
    assert contrast_decision(fixed, inverted, "same") == {"mode": "same", "different": False}
    assert contrast_decision(fixed, moving, "different") == {"mode": "different", "different": True}


def test_two_contrasts_skip_the_network_and_run_the_optimisation(tmp_path):
    fixed = blob_volume(size=(48, 44, 40), spacing=(2.0, 2.0, 2.0))
    moving = _inverted(blob_volume(size=(48, 44, 40), spacing=(2.0, 2.0, 2.0), origin=(2.0, -1.0, 1.0), seed=2))
    lines = []
    options = RegisterOptions(qc=False, inverse=False, refine_iterations=6)
    result = register_images(fixed, moving, options, log=lines.append)
    assert result.metrics["contrast"]["different"] is True and result.metrics["contrast_mode"] == "auto"
    assert result.metrics["refine_iterations"] == 6  # --refine still decides how many
    assert not any("network inference" in line for line in lines)
    assert any("two different contrasts" in line and "optimisation alone" in line for line in lines)
    same = register_images(fixed, moving, RegisterOptions(qc=False, inverse=False, refine_iterations=6, contrast="same"), log=lines.append)
    assert same.metrics["contrast"] == {"mode": "same", "different": False}
    assert optimisation_refinement(RegisterOptions())["iterations"] == DEFAULT_NONE_REFINEMENT
