"""Spatial transformer conventions: [k, j, i] tensors, grid_sample's (x, y, z) order, flow direction."""

import pytest
import torch
from monai.networks.blocks import Warp

from VoxelMorphRegLib.tensor.warping import compose, identity_grid, resize_flow, warp, warp_labels


def ramp(shape=(12, 10, 8)):
    k, j, i = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in shape), indexing="ij")
    return (100 * k + 10 * j + i)[None, None], (k, j, i)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_constant_flow_samples_at_x_plus_u_along_the_matching_axis(axis):
    image, _ = ramp()
    flow = torch.zeros(1, 3, *image.shape[2:])
    flow[:, axis] = 2.0  # channel `axis` moves along tensor axis `axis`
    out = warp(image, flow, padding_mode="border")
    # warped(x) = image(x + 2 e_axis): values grow by 2 * (100, 10, 1)[axis] in the interior
    interior = [slice(None), slice(None)] + [slice(0, n - 3) for n in image.shape[2:]]
    expected = image[tuple(interior)] + 2 * (100, 10, 1)[axis]
    assert torch.allclose(out[tuple(interior)], expected, atol=1e-3)


def test_fractional_flow_interpolates_linearly():
    image, _ = ramp()
    flow = torch.zeros(1, 3, *image.shape[2:])
    flow[:, 2] = 0.25
    out = warp(image, flow, padding_mode="border")
    assert torch.allclose(out[..., :-1], image[..., :-1] + 0.25, atol=1e-4)


def test_matches_monai_warp_on_a_random_field():
    torch.manual_seed(0)
    image = torch.rand(1, 2, 10, 12, 9)
    flow = torch.randn(1, 3, 10, 12, 9) * 1.5
    ours = warp(image, flow, padding_mode="border")
    theirs = Warp(mode="bilinear", padding_mode="border")(image, flow)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_warp_keeps_float32_under_autocast():
    image = torch.rand(1, 1, 8, 8, 8)
    flow = torch.full((1, 3, 8, 8, 8), 0.3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = warp(image.bfloat16(), flow.bfloat16())
    assert out.dtype == torch.float32


def test_identity_grid_is_k_j_i():
    grid = identity_grid((3, 4, 5))
    assert grid.shape == (1, 3, 3, 4, 5)
    assert grid[0, 0, 2, 1, 4] == 2 and grid[0, 1, 2, 1, 4] == 1 and grid[0, 2, 2, 1, 4] == 4


def test_warp_labels_never_mixes_labels_and_is_exact_for_identity():
    labels = torch.zeros(1, 1, 16, 16, 16, dtype=torch.int32)
    labels[..., 2:8, :, :] = 3
    labels[..., 8:14, 4:12, :] = 7
    assert torch.equal(warp_labels(labels, torch.zeros(1, 3, 16, 16, 16)), labels)
    flow = torch.zeros(1, 3, 16, 16, 16)
    flow[:, 0] = 0.5  # half a voxel: bilinear warping of the raw IDs would give 1.5, 5.0, ...
    flow[:, 1] = 0.3
    warped = warp_labels(labels, flow)
    assert set(torch.unique(warped).tolist()) <= {0, 3, 7}
    assert warped.dtype == labels.dtype


def test_resize_flow_keeps_physical_displacement():
    flow = torch.zeros(1, 3, 5, 5, 5)
    flow[:, 1] = 1.0  # one coarse voxel = 2 fine voxels when 5 -> 9 (align_corners)
    fine = resize_flow(flow, (9, 9, 9))
    assert fine.shape == (1, 3, 9, 9, 9)
    assert torch.allclose(fine[:, 1], torch.full((1, 9, 9, 9), 2.0))
    assert torch.allclose(fine[:, 0], torch.zeros(1, 9, 9, 9))


def test_compose_of_translations_adds_them():
    a = torch.zeros(1, 3, 8, 8, 8)
    a[:, 0] = 1.0
    b = torch.zeros(1, 3, 8, 8, 8)
    b[:, 2] = -0.5
    assert torch.allclose(compose(a, b), a + b)
