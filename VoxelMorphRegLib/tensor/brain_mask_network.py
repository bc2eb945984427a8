"""A small 3D U-Net that predicts the brain's signed distance (mm, negative inside) from one image.

It runs on a coarse grid (4 mm for the bundled model): a whole head fits in about 64^3 voxels, and
the distance, unlike a probability, can be interpolated linearly back to the scan's own grid
without losing the boundary's sub-voxel position. Built from the same block as the registration
U-Net (:func:`.unet._conv`), with batch-free instance normalisation so that any contrast,
bias and field of view gives features on one scale.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

BRAIN_MASK_FEATURES = (16, 32, 48, 64, 64)


def _block(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(OrderedDict(
        conv=nn.Conv3d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1),
        norm=nn.InstanceNorm3d(out_channels, affine=True),
        act=nn.LeakyReLU(0.2),
    ))


class BrainMaskUNet(nn.Module):
    """Encoder of strided convolutions (two blocks a level), decoder with skips, one output channel.

    ``features[0]`` runs at the input resolution, each further entry halves it; input sizes must be
    divisible by :attr:`divisor`. The output is the signed distance to the brain's surface in
    units of ``distance_scale`` mm (so that the last layer works near unit scale).
    """

    def __init__(self, features: Sequence[int] = BRAIN_MASK_FEATURES, distance_scale: float = 10.0):
        super().__init__()
        self.levels = len(features) - 1
        self.distance_scale = float(distance_scale)
        self.encoder = nn.ModuleList()
        previous = 1
        for depth, width in enumerate(features):
            self.encoder.append(nn.Sequential(_block(previous, width, stride=1 if depth == 0 else 2), _block(width, width)))
            previous = width
        self.decoder = nn.ModuleList()
        for depth in range(self.levels - 1, -1, -1):
            width = features[depth]
            self.decoder.append(nn.Sequential(_block(previous + width, width), _block(width, width)))
            previous = width
        self.upsample = nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False)
        self.head = nn.Conv3d(previous, 1, kernel_size=1)

    @property
    def divisor(self) -> int:
        return 2**self.levels

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``image`` ``[B, 1, K, J, I]`` in [0, 1] -> signed distance in mm, same shape."""
        x = image
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for block in self.decoder:
            x = block(torch.cat([self.upsample(x), skips.pop()], dim=1))
        return self.head(x) * self.distance_scale
