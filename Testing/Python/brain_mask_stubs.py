"""A stand-in for the brain extraction network whose answer is known (shared by the brain-mask tests)."""

from __future__ import annotations

import torch


class SphereNetwork(torch.nn.Module):
    """Stands in for the network: the signed distance (mm) to a sphere of ``radius`` mm whose centre
    is ``offset`` mm (along the grid's k, j, i axes) from the centre of whatever grid it is given
    (the network grid covers the scan's field of view, centred, in the LIA orientation)."""

    divisor = 16

    def __init__(self, radius: float, spacing: float, offset=(0.0, 10.0, 20.0)):
        super().__init__()
        self.radius, self.spacing, self.offset = radius, spacing, offset

    def forward(self, image):
        shape = image.shape[2:]
        axes = [(torch.arange(n, dtype=torch.float32) - (n - 1) / 2) * self.spacing - o for n, o in zip(shape, self.offset)]
        k, j, i = torch.meshgrid(*axes, indexing="ij")
        return (torch.sqrt(k**2 + j**2 + i**2) - self.radius)[None, None]
