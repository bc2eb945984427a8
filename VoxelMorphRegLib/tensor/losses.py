"""Training and refinement losses, built on MONAI's implementations."""

from __future__ import annotations

import warnings

import torch
from monai.losses import BendingEnergyLoss, DiceLoss, DiffusionLoss, LocalNormalizedCrossCorrelationLoss


# MONAI's deform losses index with lists, which PyTorch >= 2.9 warns about on every call.
warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing", category=UserWarning)


class ImageSimilarity(torch.nn.Module):
    """``mse`` or ``lncc`` (local normalised cross-correlation, as a loss: lower is better).

    LNCC is computed in float32 outside autocast: its variance terms lose all precision in
    fp16. MONAI clamps both local variances below by ``smooth_dr``, which guards against the
    NaN and negative-variance failures of constant patches (e.g. background). The numerator
    offset ``smooth_nr`` must stay 0: with MONAI's default (1e-5 over a clamped 1e-5 * 1e-5)
    every constant patch scores 1e5 instead of 0, swamping the loss with the background.
    Each local score then lies in [0, 1] and the loss in [-1, 0].
    """

    def __init__(self, kind: str = "lncc", window: int = 9):
        super().__init__()
        if kind not in ("lncc", "mse"):
            raise ValueError(f"unknown similarity {kind!r}; choose lncc or mse")
        self.kind = kind
        self.lncc = LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=window, kernel_type="rectangular", smooth_nr=0.0, smooth_dr=1e-5)

    def forward(self, warped: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=warped.device.type, enabled=False):
            warped, fixed = warped.float(), fixed.float()
            if self.kind == "mse":
                return torch.mean((warped - fixed) ** 2)
            return self.lncc(warped, fixed)


class Smoothness(torch.nn.Module):
    """``gradient`` (diffusion, squared first derivatives) or ``bending`` energy of a field."""

    def __init__(self, kind: str = "gradient"):
        super().__init__()
        if kind not in ("gradient", "bending"):
            raise ValueError(f"unknown smoothness {kind!r}; choose gradient or bending")
        self.loss = DiffusionLoss(normalize=False) if kind == "gradient" else BendingEnergyLoss(normalize=False)

    def forward(self, field: torch.Tensor) -> torch.Tensor:
        return self.loss(field.float())


def one_hot(labels: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``[B, 1, ...]`` label map -> ``[B, len(values), ...]`` float indicators of ``values``."""
    return torch.cat([(labels == v).float() for v in values], dim=1)


class LabelDice(torch.nn.Module):
    """Soft Dice loss between warped one-hot moving labels and fixed one-hot labels (background excluded)."""

    def __init__(self):
        super().__init__()
        # squared_pred: 2 sum(pq) / (sum p^2 + sum q^2) is 1 only where p = q, also for soft (resampled)
        # one-hot maps; with the plain denominator a soft map scores below 1 against itself.
        self.dice = DiceLoss(include_background=True, squared_pred=True, smooth_nr=1e-5, smooth_dr=1e-5)

    def forward(self, warped_one_hot: torch.Tensor, fixed_one_hot: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=warped_one_hot.device.type, enabled=False):
            return self.dice(warped_one_hot.float(), fixed_one_hot.float())
