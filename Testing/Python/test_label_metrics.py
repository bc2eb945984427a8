"""Dice per label: known answers, and the fast counting path agrees with the plain definition."""

import numpy as np

from VoxelMorphRegLib.pipelines.label_metrics import dice_per_label


def test_known_overlap():
    a = np.zeros((10, 10, 10), np.int16)
    b = np.zeros_like(a)
    a[2:6] = 4  # 400 voxels
    b[3:7] = 4  # 400 voxels, 300 shared
    a[8:, :5] = 9
    assert dice_per_label(a, b) == {4: 0.75}  # 9 is absent from b: not a shared label
    assert dice_per_label(a, b, [4, 9, 12]) == {4: 0.75, 9: 0.0}  # 12 is in neither: left out


def test_counting_path_equals_the_definition():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 40, (20, 20, 20))
    b = np.where(rng.random(a.shape) < 0.7, a, rng.integers(0, 40, a.shape))
    fast = dice_per_label(a, b)
    for label in range(1, 40):
        x, y = a == label, b == label
        assert np.isclose(fast[label], 2 * (x & y).sum() / (x.sum() + y.sum()))
    negative = dice_per_label(a - 5, b - 5)  # negative labels take the plain path
    assert np.isclose(negative[7 - 5], fast[7])
