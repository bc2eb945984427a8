"""Per-pair refinement: gradient descent on the velocity field of one pair.

Starting from the network's velocity it sharpens a prediction; starting from zero (no model)
it is a classical optimisation-based diffeomorphic registration.
"""

from __future__ import annotations

import torch

from .losses import ImageSimilarity, Smoothness
from .registration_network import RegistrationNetwork
from .warping import warp


def refine_velocity(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    velocity: torch.Tensor,
    flow_from_velocity,
    iterations: int,
    similarity: str = "lncc",
    window: int = 7,
    smoothness_weight: float = 1.0,
    learning_rate: float = 0.1,
    progress=None,
    should_stop=lambda: False,
) -> torch.Tensor:
    """Return the velocity after ``iterations`` Adam steps on ``sim(warp(moving), fixed) + w * smooth(v)``.

    ``flow_from_velocity(v)`` maps a velocity to the flow on the images' grid (integration and
    upsampling), so the refinement optimises exactly what registration then uses.
    """
    velocity = velocity.detach().clone().float().requires_grad_(True)
    optimiser = torch.optim.Adam([velocity], lr=learning_rate)
    sim = ImageSimilarity(similarity, window).to(moving.device)
    smooth = Smoothness("gradient").to(moving.device)
    moving, fixed = moving.float(), fixed.float()
    for iteration in range(iterations):
        if should_stop():
            break
        optimiser.zero_grad(set_to_none=True)
        flow = flow_from_velocity(velocity)
        loss = sim(warp(moving, flow), fixed) + smoothness_weight * smooth(velocity)
        loss.backward()
        optimiser.step()
        if progress is not None:
            progress(iteration + 1, iterations, loss.item())
    return velocity.detach()


def zero_velocity(network: RegistrationNetwork, shape, device) -> torch.Tensor:
    """A zero velocity on ``network``'s velocity grid for images of ``shape``."""
    factor = 2**network.unet.svf_level
    return torch.zeros((1, 3, *(n // factor for n in shape)), device=device)
