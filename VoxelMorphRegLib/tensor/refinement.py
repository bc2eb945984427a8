"""Per-pair refinement: gradient descent on the velocity field of one pair.

Starting from the network's velocity it sharpens a prediction; starting from zero (no model)
it is a classical optimisation-based diffeomorphic registration.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .integration import integrate_velocity
from .losses import ImageSimilarity, Smoothness
from .registration_network import RegistrationNetwork
from .warping import warp


def on_grid(image: torch.Tensor, shape) -> torch.Tensor:
    """``image`` smoothed over 3 voxels and sampled on a coarser grid of ``shape`` covering the
    same field of view (corner voxel centres aligned, the convention of ``resize_flow``)."""
    shape = tuple(int(n) for n in shape)
    if tuple(image.shape[2:]) == shape:
        return image
    smoothed = F.avg_pool3d(image, kernel_size=3, stride=1, padding=1, count_include_pad=False)
    return F.interpolate(smoothed, size=shape, mode="trilinear", align_corners=True)


class Adam:
    """Adam (Kingma and Ba; ``torch.optim.Adam``'s defaults and update) on one tensor.

    Here rather than ``torch.optim.Adam`` because constructing that imports ``torch._dynamo``,
    1.6 s of every refined ``register`` on 2 cores; Testing/Python/test_refinement.py checks
    that both take the same steps."""

    def __init__(self, parameter: torch.Tensor, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.parameter, self.lr, self.betas, self.eps = parameter, lr, betas, eps
        self.mean = torch.zeros_like(parameter)
        self.square = torch.zeros_like(parameter)
        self.steps = 0

    @torch.no_grad()
    def step(self):
        gradient = self.parameter.grad
        beta1, beta2 = self.betas
        self.steps += 1
        self.mean.mul_(beta1).add_(gradient, alpha=1 - beta1)
        self.square.mul_(beta2).addcmul_(gradient, gradient, value=1 - beta2)
        denominator = (self.square.sqrt() / (1 - beta2**self.steps) ** 0.5).add_(self.eps)
        self.parameter.addcdiv_(self.mean, denominator, value=-self.lr / (1 - beta1**self.steps))

    def zero_grad(self):
        self.parameter.grad = None


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
    coarse_iterations: int = 0,
    integration_steps: int = 7,
    coarse_window: int = 5,
    tolerance: float = 0.0,
) -> torch.Tensor:
    """Return the velocity after Adam steps on ``sim(warp(moving), fixed) + w * smooth(v)``.

    Two levels, both optimising the same velocity (on its own grid, e.g. 4 mm for a 2 mm model):
    first ``coarse_iterations`` steps with the images brought onto the velocity's grid, where
    the integrated field needs no upsampling and every step costs several times less; then
    ``iterations`` steps on the images' grid, where ``flow_from_velocity(v)`` maps a velocity to
    the flow (integration and upsampling), so the refinement ends on exactly what registration
    then uses. With ``tolerance > 0`` a level stops early once its loss has improved by less
    than ``tolerance`` over the last 10 steps. ``progress(i, n, loss)`` counts both levels.

    Each level ends on the velocity after its last step while the loss still falls; where the loss
    of the last step's starting point was not the level's lowest, the level ends on the velocity of
    the lowest loss instead. Adam takes steps of about ``learning_rate`` whatever the gradient's
    size, so near an optimum (an identical pair, a network already right) its steps would only
    add noise; this way a pair that cannot be improved keeps the velocity it came with.
    """
    velocity = velocity.detach().clone().float().requires_grad_(True)
    optimiser = Adam(velocity, lr=learning_rate)
    smooth = Smoothness("gradient").to(moving.device)
    moving, fixed = moving.float(), fixed.float()
    total = coarse_iterations + iterations
    done = 0
    levels = []
    if coarse_iterations > 0:
        grid = velocity.shape[2:]
        coarse_moving, coarse_fixed = on_grid(moving, grid), on_grid(fixed, grid)
        levels.append((coarse_iterations, ImageSimilarity(similarity, coarse_window).to(moving.device), coarse_moving, coarse_fixed, lambda v: integrate_velocity(v, integration_steps)))
    if iterations > 0:
        levels.append((iterations, ImageSimilarity(similarity, window).to(moving.device), moving, fixed, flow_from_velocity))
    for count, sim, level_moving, level_fixed, to_flow in levels:
        history = []
        best = (float("inf"), None)  # the level's lowest loss and the velocity it was measured at
        for _ in range(count):
            if should_stop():
                return velocity.detach()
            optimiser.zero_grad()
            loss = sim(warp(level_moving, to_flow(velocity)), level_fixed) + smoothness_weight * smooth(velocity)
            value = loss.item()
            if value < best[0]:
                best = (value, velocity.detach().clone())
            loss.backward()
            optimiser.step()
            done += 1
            history.append(value)
            if progress is not None:
                progress(done, total, history[-1])
            if tolerance > 0 and len(history) > 10 and history[-11] - history[-1] < tolerance:
                done += count - len(history)  # the level's remaining steps are skipped
                break
        if history and history[-1] > best[0]:
            with torch.no_grad():
                velocity.copy_(best[1])
    return velocity.detach()


def zero_velocity(network: RegistrationNetwork, shape, device) -> torch.Tensor:
    """A zero velocity on ``network``'s velocity grid for images of ``shape``."""
    factor = 2**network.unet.svf_level
    return torch.zeros((1, 3, *(n // factor for n in shape)), device=device)
