"""Training and refinement losses.

LNCC and the gradient (diffusion) smoothness, the two terms of every refinement, are computed
here in torch with exactly MONAI's formulas (``LocalNormalizedCrossCorrelationLoss`` with a
rectangular kernel, ``DiffusionLoss``; Testing/Python/test_losses.py compares them), because
``import monai`` alone costs about 3.5 s of each ``register`` process on 2 cores. The Dice and
bending-energy terms, used only in training, are MONAI's, imported when first built.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F


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
        self.window = window

    def forward(self, warped: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=warped.device.type, enabled=False):
            warped, fixed = warped.float(), fixed.float()
            if self.kind == "mse":
                return torch.mean((warped - fixed) ** 2)
            return -local_ncc(warped, fixed, self.window).mean()


class Smoothness(torch.nn.Module):
    """``gradient`` (diffusion, squared first derivatives) or ``bending`` energy of a field."""

    def __init__(self, kind: str = "gradient"):
        super().__init__()
        if kind not in ("gradient", "bending"):
            raise ValueError(f"unknown smoothness {kind!r}; choose gradient or bending")
        self.kind = kind
        if kind == "bending":
            from monai.losses import BendingEnergyLoss

            self.loss = BendingEnergyLoss(normalize=False)

    def forward(self, field: torch.Tensor) -> torch.Tensor:
        field = field.float()
        return diffusion(field) if self.kind == "gradient" else self.loss(field)


def box_sums(x: torch.Tensor, window: int) -> torch.Tensor:
    """Sums of ``x`` [B, C, K, J, I] over ``window``^3 boxes centred on each voxel, zero outside:
    three 1-D passes of a depthwise convolution with ones (twice as fast on the CPU as avg_pool3d)."""
    channels = x.shape[1]
    for axis in range(3):
        shape, padding = [1, 1, 1], [0, 0, 0]
        shape[axis], padding[axis] = window, window // 2
        ones = torch.ones((channels, 1, *shape), dtype=x.dtype, device=x.device)
        x = F.conv3d(x, ones, padding=tuple(padding), groups=channels)
    return x


def local_ncc(pred: torch.Tensor, target: torch.Tensor, window: int, eps: float = 1e-5) -> torch.Tensor:
    """Squared local normalised cross-correlation per voxel, in [0, 1] (MONAI's rectangular LNCC
    with ``smooth_nr=0``, ``smooth_dr=eps``): both local variances are clamped below by ``eps``,
    so a constant patch (background) scores 0, never NaN."""
    channels = pred.shape[1]
    sums = box_sums(torch.cat([target, pred, target * target, pred * pred, target * pred], dim=1), window)
    t_sum, p_sum, t2_sum, p2_sum, tp_sum = torch.split(sums, channels, dim=1)
    volume = float(window**3)
    cross = tp_sum - p_sum * (t_sum / volume)
    t_var = torch.clamp_min(t2_sum - t_sum * (t_sum / volume), eps)
    p_var = torch.clamp_min(p2_sum - p_sum * (p_sum / volume), eps)
    return cross * cross / (t_var * p_var)


def diffusion(field: torch.Tensor) -> torch.Tensor:
    """Mean over voxels and components of the squared central differences of ``field`` [B, 3, ...]
    summed over the three axes, on the interior voxels (MONAI's ``DiffusionLoss(normalize=False)``)."""
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1), slice(1, -1))
    total = 0.0
    for axis in range(2, 5):
        ahead, behind = list(inner), list(inner)
        ahead[axis], behind[axis] = slice(2, None), slice(None, -2)
        gradient = (field[tuple(ahead)] - field[tuple(behind)]) / 2.0
        total = total + gradient * gradient
    return total.mean()


def one_hot(labels: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``[B, 1, ...]`` label map -> ``[B, len(values), ...]`` float indicators of ``values``."""
    return torch.cat([(labels == v).float() for v in values], dim=1)


class LabelDice(torch.nn.Module):
    """Soft Dice loss between warped one-hot moving labels and fixed one-hot labels (background excluded)."""

    def __init__(self):
        super().__init__()
        # squared_pred: 2 sum(pq) / (sum p^2 + sum q^2) is 1 only where p = q, also for soft (resampled)
        # one-hot maps; with the plain denominator a soft map scores below 1 against itself.
        from monai.losses import DiceLoss

        self.dice = DiceLoss(include_background=True, squared_pred=True, smooth_nr=1e-5, smooth_dr=1e-5)

    def forward(self, warped_one_hot: torch.Tensor, fixed_one_hot: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=warped_one_hot.device.type, enabled=False):
            return self.dice(warped_one_hot.float(), fixed_one_hot.float())


def mean_signed_local_ncc(pred: torch.Tensor, target: torch.Tensor, window: int, where: torch.Tensor | None = None, eps: float = 1e-5) -> float:
    """Mean over ``where`` (or every voxel) of the local normalised cross-correlation with its sign:
    near 1 where the two images' local intensities rise together, near -1 where one is the other's
    negative (CSF dark in T1, bright in T2)."""
    sums = box_sums(torch.cat([target, pred, target * target, pred * pred, target * pred], dim=1).float(), window)
    t_sum, p_sum, t2_sum, p2_sum, tp_sum = torch.split(sums, 1, dim=1)
    volume = float(window**3)
    cross = tp_sum - p_sum * (t_sum / volume)
    t_var = torch.clamp_min(t2_sum - t_sum * (t_sum / volume), eps)
    p_var = torch.clamp_min(p2_sum - p_sum * (p_sum / volume), eps)
    correlation = cross / torch.sqrt(t_var * p_var)
    return float(correlation.mean() if where is None else correlation[where].mean())
