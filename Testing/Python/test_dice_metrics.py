"""metrics.json Dice before / after the affine / after registration, on owned arrays.

The scores were once taken from views of freed temporary images: identical label maps scored far
below 1.0 before registration. Here identical maps must score exactly 1.0, and a known shift must
give exactly the Dice NumPy computes for it.
"""

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import blob_labels, blob_volume

from VoxelMorphRegLib.contract import RegisterOptions
from VoxelMorphRegLib.pipelines.register import register_images


def dice(a, b, label):
    a, b = a == label, b == label
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(scope="module")
def fixed():
    return blob_volume(size=(32, 32, 32), spacing=(3.0, 3.0, 3.0))  # a head-sized field of view for the affine stage


def test_identical_label_maps_score_one_before_and_after_the_affine(fixed):
    labels = blob_labels(fixed)
    result = register_images(fixed, fixed, RegisterOptions(model="none", affine=True, refine_iterations=2, qc=False), labels, labels, log=lambda m: None)
    report = result.metrics["dice"]
    assert report["labels"] == [1, 2, 3]
    assert report["mean_before"] == 1.0 and all(v == 1.0 for v in report["before"].values())
    assert report["mean_affine"] > 0.97 and report["mean_after"] > 0.97


def test_a_known_shift_gives_the_dice_numpy_computes(fixed):
    labels = blob_labels(fixed)
    array = sitk.GetArrayFromImage(labels)
    moved = np.zeros_like(array)
    moved[:, :, 3:] = array[:, :, :-3]  # 3 voxels along i: the moving labels, on the same grid
    moving_labels = sitk.GetImageFromArray(moved)
    moving_labels.CopyInformation(labels)
    moving = sitk.Resample(fixed, fixed, sitk.TranslationTransform(3, (-9.0, 0.0, 0.0)), sitk.sitkLinear, 0.0)  # 3 voxels of 3 mm
    result = register_images(fixed, moving, RegisterOptions(model="none", affine=False, refine_iterations=2, qc=False),
                             moving_labels, labels, log=lambda m: None)
    report = result.metrics["dice"]
    expected = {str(k): round(dice(moved, array, k), 4) for k in (1, 2, 3)}
    assert report["before"] == expected
    assert report["mean_before"] == round(float(np.mean([dice(moved, array, k) for k in (1, 2, 3)])), 4)
    assert report["mean_before"] < 0.9
    warped = sitk.GetArrayFromImage(result.warped_labels)
    assert report["after"] == {str(k): round(dice(warped, array, k), 4) for k in (1, 2, 3)}
