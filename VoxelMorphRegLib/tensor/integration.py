"""Scaling and squaring: exponentiate a stationary velocity field into a displacement.

Kept rather than MONAI's ``DVF2DDF`` (the same squarings): that one pads with zeros, pulling the
field to zero at the image border, where this one extends it (``padding_mode="border"``).
"""

from __future__ import annotations

import torch

from .warping import warp

DEFAULT_STEPS = 7


def integrate_velocity(velocity: torch.Tensor, steps: int = DEFAULT_STEPS, padding_mode: str = "border") -> torch.Tensor:
    """Displacement ``phi - id`` of ``phi = exp(v)``, both ``[B, 3, K, J, I]`` in voxel units.

    ``v`` is scaled by ``1 / 2**steps`` (small enough that ``id + v`` is a good first-order
    approximation of the flow), then the map is composed with itself ``steps`` times:
    ``u <- u + u o (id + u)``. Integrating ``-v`` gives the inverse transform.
    ``padding_mode="zeros"`` reproduces MONAI's ``DVF2DDF``; the default ``"border"``
    extends the field at the edges instead of pulling it to zero there.
    """
    if steps < 0:
        raise ValueError(f"integration steps must be >= 0, got {steps}")
    flow = velocity.float() / (2**steps)
    for _ in range(steps):
        flow = flow + warp(flow, flow, padding_mode=padding_mode)
    return flow
