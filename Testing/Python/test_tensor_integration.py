"""Scaling and squaring: against MONAI's DVF2DDF, translations, and the inverse by integrating -v."""

import pytest
import torch
from monai.networks.blocks import DVF2DDF

from VoxelMorphRegLib.tensor.integration import integrate_velocity
from VoxelMorphRegLib.tensor.synthesis import random_velocity
from VoxelMorphRegLib.tensor.warping import compose


def smooth_velocity(shape=(16, 18, 14), magnitude=3.0, seed=0, control_spacing=6.0):
    return random_velocity(shape, magnitude, control_spacing=control_spacing, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("steps", [4, 7])
def test_matches_monai_dvf2ddf_on_the_same_field(steps):
    velocity = smooth_velocity()
    ours = integrate_velocity(velocity, steps, padding_mode="zeros")
    theirs = DVF2DDF(num_steps=steps, mode="bilinear", padding_mode="zeros")(velocity)
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_constant_velocity_integrates_to_the_matching_translation():
    velocity = torch.zeros(1, 3, 12, 12, 12)
    velocity[:, 0], velocity[:, 1], velocity[:, 2] = 1.5, -2.0, 0.75
    flow = integrate_velocity(velocity, 7)  # border padding: exact everywhere
    assert torch.allclose(flow, velocity, atol=1e-5)


def test_zero_steps_returns_the_velocity():
    velocity = smooth_velocity()
    assert torch.allclose(integrate_velocity(velocity, 0), velocity)


def test_negative_velocity_gives_the_inverse():
    velocity = smooth_velocity(magnitude=3.0, control_spacing=10.0)
    forward, inverse = integrate_velocity(velocity), integrate_velocity(-velocity)
    # phi(phi_inv(x)) - x and phi_inv(phi(x)) - x, away from the borders
    round_trip = compose(forward, inverse)
    other_way = compose(inverse, forward)
    core = (slice(None), slice(None), slice(3, -3), slice(3, -3), slice(3, -3))
    assert forward.abs().max() > 2.0
    for residual in (round_trip[core], other_way[core]):
        assert residual.abs().max() < 0.1  # voxels, for displacements up to ~3 voxels
        assert residual.abs().mean() < 0.01


def test_integrated_field_is_diffeomorphic():
    from VoxelMorphRegLib.tensor.jacobian import jacobian_determinant

    flow = integrate_velocity(smooth_velocity(magnitude=4.0))
    assert jacobian_determinant(flow).min() > 0
