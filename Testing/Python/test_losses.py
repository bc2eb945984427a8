"""The refinement's LNCC and smoothness are MONAI's formulas without importing MONAI: values and
gradients agree with MONAI's losses, also on constant (background) patches."""

import pytest
import torch

from VoxelMorphRegLib.tensor.losses import ImageSimilarity, Smoothness, box_sums

monai_losses = pytest.importorskip("monai.losses")


@pytest.mark.parametrize("window", [5, 7, 9])
def test_lncc_equals_monais_rectangular_lncc(window):
    torch.manual_seed(window)
    pred = torch.rand(2, 1, 20, 24, 28, requires_grad=True)
    target = torch.rand(2, 1, 20, 24, 28)
    target[..., :8] = 0.25  # constant patches: both variances clamped
    pred.data[:, :, :6] = 0.0
    reference = monai_losses.LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=window, kernel_type="rectangular", smooth_nr=0.0, smooth_dr=1e-5)
    theirs = reference(pred, target)
    ours = ImageSimilarity("lncc", window)(pred, target)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)
    (their_grad,) = torch.autograd.grad(theirs, pred)
    (our_grad,) = torch.autograd.grad(ours, pred)
    assert torch.allclose(our_grad, their_grad, atol=1e-9, rtol=1e-4)


def test_gradient_smoothness_equals_monais_diffusion_loss():
    torch.manual_seed(0)
    field = torch.randn(1, 3, 9, 10, 11)
    field[:, 1] *= 3  # components of different size
    assert Smoothness("gradient")(field).item() == pytest.approx(monai_losses.DiffusionLoss(normalize=False)(field).item(), rel=1e-6)
    ramp = torch.zeros(1, 3, 6, 6, 6)
    ramp[:, 0] = torch.arange(6.0)[:, None, None] * 2  # d/dk of component 0 is 2 everywhere
    assert Smoothness("gradient")(ramp).item() == pytest.approx(4 / 3)  # (2^2 + 0 + 0) averaged over the 3 components


def test_box_sums_count_the_window_with_zeros_outside():
    ones = torch.ones(1, 1, 5, 5, 5)
    sums = box_sums(ones, 3)
    assert sums[0, 0, 2, 2, 2].item() == 27  # interior: the whole 3x3x3 box
    assert sums[0, 0, 0, 0, 0].item() == 8  # corner: 2x2x2 inside the volume
    assert sums[0, 0, 0, 2, 2].item() == 18
