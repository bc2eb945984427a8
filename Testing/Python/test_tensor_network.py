"""U-Net velocity network, Jacobians and losses."""

import numpy as np
import pytest
import torch

from VoxelMorphRegLib.tensor.jacobian import folding_statistics, jacobian_determinant
from VoxelMorphRegLib.tensor.losses import ImageSimilarity, LabelDice, Smoothness, one_hot
from VoxelMorphRegLib.tensor.registration_network import RegistrationNetwork
from VoxelMorphRegLib.tensor.warping import compose


@pytest.mark.parametrize("svf_level", [0, 1])
def test_network_shapes_and_identity_start(svf_level):
    net = RegistrationNetwork(decoder_features=(32, 32, 32, 16)[: 4 - svf_level], svf_level=svf_level)
    moving, fixed = torch.rand(1, 1, 32, 48, 16), torch.rand(1, 1, 32, 48, 16)
    out = net(moving, fixed)
    assert out.velocity.shape == (1, 3, 32 // 2**svf_level, 48 // 2**svf_level, 16 // 2**svf_level)
    assert out.flow.shape == (1, 3, 32, 48, 16)
    assert out.flow.abs().max() < 1e-2  # the head starts near zero: the identity transform


def _trained_looking(symmetric):
    """A network whose head is not near zero, so that it has a bias as trained weights do."""
    torch.manual_seed(3)
    net = RegistrationNetwork(encoder_features=(4, 8, 8), decoder_features=(8,), svf_level=1, symmetric=symmetric)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
    return net.eval()


def test_symmetric_velocity_is_antisymmetric_and_zero_on_an_identical_pair():
    """Swapped inputs negate the velocity (so the transform is the exact inverse) and an identical
    pair gets no motion; the one-way network has neither property (the test can fail)."""
    torch.manual_seed(0)
    a, b = torch.rand(2, 1, 1, 16, 16, 16)
    one_way, both_ways = _trained_looking(False), _trained_looking(True)
    with torch.no_grad():
        assert one_way.velocity(a, a).abs().max() > 1e-3
        assert (one_way.velocity(a, b) + one_way.velocity(b, a)).abs().max() > 1e-3
        assert both_ways.velocity(a, a).abs().max() == 0
        torch.testing.assert_close(both_ways.velocity(a, b), -both_ways.velocity(b, a), rtol=0, atol=1e-6)
        # it is the antisymmetric part of the same U-Net's two answers, per pair of a batch
        # (a batch of two may take another convolution algorithm than one pair: float32 round-off)
        expected = 0.5 * (one_way.unet(a, b) - one_way.unet(b, a))
        scale = float(expected.abs().max())
        assert scale > 1e-2
        torch.testing.assert_close(both_ways.velocity(a, b), expected, rtol=0, atol=1e-3 * scale)
        batch = both_ways.velocity(torch.cat([a, b]), torch.cat([b, a]))
        torch.testing.assert_close(batch[0:1], both_ways.velocity(a, b), rtol=0, atol=1e-3 * scale)
        torch.testing.assert_close(batch[1:2], -both_ways.velocity(a, b), rtol=0, atol=1e-3 * scale)
        # the transforms of (a, b) and (b, a), as forward() gives them, undo each other:
        # x -> x + ab(x) -> ... + ba(x + ab(x)) comes back to x within integration error
        # (the random weights' velocities are smoothed and scaled to about a voxel, as a trained
        # model's are; both linear, so they keep what antisymmetry there is)
        k = 1.0 / float(both_ways.velocity(a, b).norm(dim=1).mean())

        def smooth(v):
            for _ in range(3):
                v = torch.nn.functional.avg_pool3d(v, 3, stride=1, padding=1, count_include_pad=False)
            return v

        shape = a.shape[2:]
        flow_of = lambda net, m, f: net.flow_from_velocity(smooth(k * net.velocity(m, f)), shape)  # noqa: E731
        ab, ba = flow_of(both_ways, a, b), flow_of(both_ways, b, a)
        residual = compose(ba, ab).norm(dim=1)[..., 3:-3, 3:-3, 3:-3]  # away from the border, where sampling leaves the grid
        size = float(ab.norm(dim=1).mean())
        assert size > 0.2
        one_way_residual = float(compose(flow_of(one_way, b, a), flow_of(one_way, a, b)).norm(dim=1)[..., 3:-3, 3:-3, 3:-3].mean())
        assert float(residual.mean()) < 0.05 * size and one_way_residual > 4 * float(residual.mean()), (float(residual.mean()), one_way_residual, size)


def test_network_rejects_sizes_it_cannot_divide():
    with pytest.raises(ValueError, match="divisible by 16"):
        RegistrationNetwork()(torch.rand(1, 1, 30, 32, 32), torch.rand(1, 1, 30, 32, 32))


def test_jacobian_of_identity_scaling_and_fold():
    shape = (10, 10, 10)
    assert torch.allclose(jacobian_determinant(torch.zeros(1, 3, *shape)), torch.ones(1, *shape))
    k, j, i = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in shape), indexing="ij")
    scale = torch.stack([0.1 * k, 0.1 * j, 0.1 * i])[None]  # x -> 1.1 x
    assert torch.allclose(jacobian_determinant(scale), torch.full((1, *shape), 1.1**3), atol=1e-5)
    flip = torch.stack([torch.zeros_like(k), torch.zeros_like(j), -2.0 * i])[None]  # i -> -i: folded
    stats = folding_statistics(jacobian_determinant(flip))
    assert stats["folding_fraction"] == 1.0 and stats["folded_voxels"] == 1000


@pytest.mark.parametrize("folds", [0, 37])
def test_folding_statistics_are_those_of_the_determinant(folds):
    rng = np.random.default_rng(folds)
    det = np.exp(rng.normal(0.0, 0.2, size=(12, 14, 16))).astype(np.float32)
    det.flat[rng.choice(det.size, folds, replace=False)] = -rng.random(folds).astype(np.float32)
    stats = folding_statistics(torch.from_numpy(det))
    positive = det[det > 0]
    assert stats["folded_voxels"] == folds and stats["folding_fraction"] == pytest.approx(folds / det.size)
    assert stats["std_log_jacobian"] == pytest.approx(np.log(positive.astype(np.float64)).std(ddof=1), rel=1e-4)
    assert stats["jacobian_min"] == pytest.approx(float(det.min())) and stats["jacobian_max"] == pytest.approx(float(det.max()))
    mask = torch.zeros(det.shape, dtype=torch.bool)
    mask[2:8] = True
    masked = folding_statistics(torch.from_numpy(det), mask)
    assert masked["folded_voxels"] == int((det[2:8] <= 0).sum())
    assert masked["std_log_jacobian"] == pytest.approx(np.log(det[2:8][det[2:8] > 0].astype(np.float64)).std(ddof=1), rel=1e-4)


def test_lncc_is_bounded_and_prefers_aligned_images():
    torch.manual_seed(0)
    image = torch.zeros(1, 1, 24, 24, 24)
    image[..., 4:20, 4:20, 4:20] = torch.rand(16, 16, 16)
    lncc = ImageSimilarity("lncc", 5)
    same, shifted = lncc(image, image), lncc(torch.roll(image, 2, 3), image)
    assert -1.0 <= same < shifted <= 0.0  # background (constant patches) scores 0, not 1e5
    assert torch.isfinite(lncc(torch.zeros_like(image), image))


def test_smoothness_and_dice_losses():
    assert Smoothness()(torch.zeros(1, 3, 8, 8, 8)) == 0
    assert Smoothness("bending")(torch.randn(1, 3, 8, 8, 8)) > 0
    labels = torch.randint(0, 3, (1, 1, 8, 8, 8))
    values = torch.tensor([1, 2])
    assert LabelDice()(one_hot(labels, values), one_hot(labels, values)) < 1e-4


def test_the_unet_blocks_load_and_match_monais_convolution_block():
    """Checkpoints written with MONAI's Convolution blocks (v1) load unchanged, and compute the same."""
    convolution = pytest.importorskip("monai.networks.blocks").Convolution
    from VoxelMorphRegLib.tensor.unet import _conv

    torch.manual_seed(1)
    for stride in (1, 2):
        reference = convolution(spatial_dims=3, in_channels=4, out_channels=6, strides=stride, kernel_size=3, act=("LEAKYRELU", {"negative_slope": 0.2}), norm=None)
        ours = _conv(4, 6, stride)
        assert list(ours.state_dict()) == list(reference.state_dict())
        ours.load_state_dict(reference.state_dict())
        x = torch.randn(1, 4, 8, 10, 12)
        assert torch.allclose(ours(x), reference(x), atol=1e-6)
