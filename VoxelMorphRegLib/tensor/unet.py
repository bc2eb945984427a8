"""VoxelMorph-style U-Net that predicts a stationary velocity field from a (moving, fixed) pair."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn


# The architecture's defaults, defined once (ModelConfig, RegistrationNetwork and VelocityUNet use them):
# the bundled v1 model's architecture.
ENCODER_FEATURES = (16, 32, 32, 32, 32)
FULL_DECODER_FEATURES = (32, 32, 32, 16)  # a velocity at the input resolution (svf_level 0); each level up drops the last
SVF_LEVEL = 1


def decoder_features_for(svf_level: int = SVF_LEVEL, encoder_features: Sequence[int] = ENCODER_FEATURES) -> tuple:
    """The default decoder of an ``encoder_features`` U-Net whose velocity is at input / 2**svf_level."""
    count = len(encoder_features) - 1 - svf_level
    if count > len(FULL_DECODER_FEATURES):
        raise ValueError(f"no default decoder for {len(encoder_features)} encoder levels; give decoder_features")
    return tuple(FULL_DECODER_FEATURES[: max(count, 0)])


def _conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """3x3x3 convolution (zero padding 1) and LeakyReLU(0.2).

    The layout and parameter names of MONAI's ``Convolution`` block with ``act=LEAKYRELU,
    norm=None`` (``conv``, then ``adn.A``), so checkpoints written with either load into both
    (Testing/Python/test_tensor_network.py compares them). Built from torch here because
    ``import monai`` costs about 3.5 s of every ``register`` process on 2 cores, where the whole
    network runs in 0.2 s."""
    return nn.Sequential(OrderedDict(
        conv=nn.Conv3d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1),
        adn=nn.Sequential(OrderedDict(A=nn.LeakyReLU(0.2))),
    ))


class VelocityUNet(nn.Module):
    """Encoder of strided convolutions, decoder with skip connections, 3-channel velocity head.

    ``encoder_features[0]`` runs at the input resolution; each further entry halves it.
    ``svf_level`` is how many halvings the velocity field stays below the input resolution
    (0: full resolution; 1: half, which skips the costliest full-resolution decoder layers).
    Input sizes must be divisible by ``2 ** (len(encoder_features) - 1)``.
    """

    def __init__(
        self,
        in_channels: int = 2,
        encoder_features: Sequence[int] = ENCODER_FEATURES,
        decoder_features: Sequence[int] | None = None,  # None: decoder_features_for(svf_level, encoder_features)
        svf_level: int = SVF_LEVEL,
    ):
        super().__init__()
        levels = len(encoder_features) - 1
        if decoder_features is None and 0 <= svf_level < levels:
            decoder_features = decoder_features_for(svf_level, encoder_features)
        if not 0 <= svf_level < levels:
            raise ValueError(f"svf_level must be in [0, {levels - 1}], got {svf_level}")
        if len(decoder_features) != levels - svf_level:
            raise ValueError(f"need {levels - svf_level} decoder features for svf_level {svf_level}, got {len(decoder_features)}")
        self.levels = levels
        self.svf_level = svf_level
        self.encoder = nn.ModuleList()
        previous = in_channels
        for depth, features in enumerate(encoder_features):
            self.encoder.append(_conv(previous, features, stride=1 if depth == 0 else 2))
            previous = features
        self.decoder = nn.ModuleList()
        for step, features in enumerate(decoder_features):
            skip = encoder_features[levels - 1 - step]
            self.decoder.append(_conv(previous + skip, features))
            previous = features
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = nn.Conv3d(previous, 3, kernel_size=3, padding=1)
        # Start near the identity transform, as VoxelMorph does.
        nn.init.normal_(self.head.weight, mean=0.0, std=1e-5)
        nn.init.zeros_(self.head.bias)

    @property
    def divisor(self) -> int:
        return 2**self.levels

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        x = torch.cat([moving, fixed], dim=1)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for block in self.decoder:
            x = self.upsample(x)
            x = block(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)
