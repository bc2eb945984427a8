"""The registration model: U-Net velocity, scaling-and-squaring, flows on the input grid."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .integration import DEFAULT_STEPS, integrate_velocity
from .unet import ENCODER_FEATURES, SVF_LEVEL, VelocityUNet
from .warping import resize_flow

INTEGRATION_STEPS = DEFAULT_STEPS  # scaling-and-squaring steps of a new model (a checkpoint stores its own)


@dataclass
class RegistrationOutput:
    velocity: torch.Tensor  # [B, 3, ...] at the velocity grid (input grid / 2**svf_level)
    flow: torch.Tensor  # fixed -> moving displacement on the input grid, voxel units (k, j, i)


class RegistrationNetwork(nn.Module):
    """``forward(moving, fixed)`` -> velocity and the integrated fixed-to-moving flow.

    ``warp(moving, output.flow)`` is the moving image aligned to the fixed one. The flow of
    the inverse transform is :meth:`inverse_flow` of the same velocity.

    ``symmetric``: :meth:`velocity` runs the U-Net both ways and keeps the antisymmetric part,
    ``(u(m, f) - u(f, m)) / 2``. Swapping the inputs then negates the velocity, so the transform of
    ``(f, m)`` is exactly the inverse of that of ``(m, f)`` (``exp(-v)`` inverts ``exp(v)``) and an
    identical pair gets a zero velocity, whatever bias the weights have. It costs a second forward
    pass (the two run as one batch).
    """

    def __init__(self, encoder_features=ENCODER_FEATURES, decoder_features=None, svf_level=SVF_LEVEL, integration_steps=INTEGRATION_STEPS, symmetric=False):
        super().__init__()
        self.unet = VelocityUNet(2, encoder_features, decoder_features, svf_level)
        self.integration_steps = integration_steps
        self.symmetric = bool(symmetric)

    @property
    def divisor(self) -> int:
        return self.unet.divisor

    def flow_from_velocity(self, velocity: torch.Tensor, shape) -> torch.Tensor:
        return resize_flow(integrate_velocity(velocity, self.integration_steps), shape)

    def inverse_flow(self, velocity: torch.Tensor, shape) -> torch.Tensor:
        return self.flow_from_velocity(-velocity, shape)

    def velocity(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """The stationary velocity (float32, ``[B, 3, ...]`` on the velocity grid) of each pair;
        antisymmetric in (moving, fixed) when ``self.symmetric``."""
        if not self.symmetric:
            return self.unet(moving, fixed).float()
        both = self.unet(torch.cat([moving, fixed]), torch.cat([fixed, moving])).float()
        n = moving.shape[0]
        return 0.5 * (both[:n] - both[n:])

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> RegistrationOutput:
        shape = moving.shape[2:]
        if any(n % self.divisor for n in shape):
            raise ValueError(f"input size {tuple(shape)} must be divisible by {self.divisor}")
        velocity = self.velocity(moving, fixed)
        return RegistrationOutput(velocity=velocity, flow=self.flow_from_velocity(velocity, shape))
