"""Affine pre-alignment: recovers a known transform, in ITK's fixed-to-moving direction, reproducibly."""

import numpy as np
import SimpleITK as sitk
from conftest import blob_volume, rotation

from VoxelMorphRegLib.image.affine import affine_register
from VoxelMorphRegLib.image.displacement import physical_points


def test_recovers_a_known_affine_and_is_reproducible():
    fixed = blob_volume(size=(48, 44, 40), spacing=(1.0, 1.1, 1.2))
    truth = sitk.AffineTransform(3)
    truth.SetMatrix((rotation(0.08, -0.05, 0.1) @ np.diag([1.05, 0.97, 1.0])).flatten().tolist())
    truth.SetCenter(fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()]))
    truth.SetTranslation([2.0, -1.5, 1.0])
    # moving(truth(p)) = fixed(p): the moving image is the fixed one pushed through truth
    moving = sitk.Resample(fixed, fixed, truth.GetInverse(), sitk.sitkLinear, 0.0)
    found = affine_register(fixed, moving)
    points = physical_points(fixed)[::6, ::6, ::6].reshape(-1, 3)
    body = sitk.GetArrayFromImage(fixed)[::6, ::6, ::6].reshape(-1) > 0.2
    errors = [np.linalg.norm(np.subtract(found.TransformPoint(p.tolist()), truth.TransformPoint(p.tolist()))) for p in points[body]]
    moved = [np.linalg.norm(np.subtract(truth.TransformPoint(p.tolist()), p)) for p in points[body]]
    assert np.median(moved) > 3.0  # mm: what doing nothing would be off by
    assert np.median(errors) < 1.5 and np.median(errors) < 0.4 * np.median(moved)  # a smooth phantom: little to lock on to
    again = affine_register(fixed, moving)
    assert np.allclose(again.GetParameters(), found.GetParameters(), atol=1e-4)  # up to the rounding of threaded sums


def test_a_small_field_of_view_is_never_zoomed_or_sheared():
    """Mutual information on a 32 mm image used to run off to scales of 0.3-0.5 on an identical pair."""
    image = blob_volume(size=(32, 32, 32))
    found = affine_register(image, image)
    assert np.allclose(np.array(found.GetMatrix()).reshape(3, 3), np.eye(3), atol=0.05)
    assert np.allclose(found.GetTranslation(), 0.0, atol=0.5)


def test_real_brains_aligned_and_moved_20_mm_15_degrees(shared_data):
    """On real T1 (subj02 onto subj01): the pre-alignment recovers a 20 mm, 15 degree move as well as it aligns the original."""
    import json

    from VoxelMorphRegLib.pipelines.label_metrics import dice_per_label

    folder = shared_data / "aseg"
    labels30 = json.loads((folder / "labels30.json").read_text())
    fixed, moving = (sitk.ReadImage(str(folder / f"{s}_norm.nii.gz"), sitk.sitkFloat32) for s in ("subj01", "subj02"))
    fixed_labels, moving_labels = (sitk.ReadImage(str(folder / f"{s}_seg.nii.gz")) for s in ("subj01", "subj02"))
    centre = fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()])
    move = sitk.Euler3DTransform(centre, np.deg2rad(15), np.deg2rad(5), 0.0, (20.0, -8.0, 5.0))
    moved = sitk.Resample(moving, moving, move, sitk.sitkLinear, 0.0)
    moved_labels = sitk.Resample(moving_labels, moving_labels, move, sitk.sitkNearestNeighbor, 0)

    def dice(transform, labels):
        warped = sitk.Resample(labels, fixed_labels, transform, sitk.sitkNearestNeighbor, 0)
        return np.mean(list(dice_per_label(sitk.GetArrayFromImage(warped), sitk.GetArrayFromImage(fixed_labels), labels30).values()))

    assert dice(sitk.Transform(3, sitk.sitkIdentity), moved_labels) < 0.1  # the move is large
    aligned = dice(affine_register(fixed, moving), moving_labels)
    recovered = dice(affine_register(fixed, moved), moved_labels)
    assert aligned > 0.59 and recovered > aligned - 0.01
