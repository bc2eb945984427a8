"""Spatial transformer: resample a tensor through a displacement field.

Conventions (see docs/GEOMETRY.md):

* Tensors are ``[B, C, K, J, I]`` (slowest axis first, as NumPy views of ITK/Slicer images).
* A displacement ``flow`` is ``[B, 3, K, J, I]`` in *voxel units* of the grid it lives on, its
  channels in tensor-axis order ``(k, j, i)``.
* ``warp(image, flow)(x) = image(x + flow(x))``: the flow maps points of the output (fixed)
  grid to points of the input (moving) grid.
* ``grid_sample`` wants ``(x, y, z) = (i, j, k)`` normalised to ``[-1, 1]`` with
  ``align_corners=True`` (voxel centre 0 -> -1, voxel centre n-1 -> +1), so the channels are
  reversed and scaled here, in float32 whatever the autocast state.

Kept rather than MONAI's ``Warp`` (the same normalisation): this one casts the flow and the
sampling grid to float32 under autocast, which MONAI's leaves to the caller, and ``resize_flow``
beside it has no MONAI counterpart.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def identity_grid(shape, device=None) -> torch.Tensor:
    """Voxel coordinates ``[1, 3, K, J, I]`` (channels k, j, i) of a grid of ``shape``."""
    axes = [torch.arange(n, dtype=torch.float32, device=device) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0).unsqueeze(0)


def _normalised_sampling_grid(flow: torch.Tensor) -> torch.Tensor:
    shape = flow.shape[2:]
    coords = identity_grid(shape, flow.device) + flow.float()
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in shape], device=flow.device).view(1, 3, 1, 1, 1)
    coords = coords * scale - 1.0
    # [B, 3(k,j,i), K, J, I] -> [B, K, J, I, 3(i,j,k)]
    return coords.flip(1).permute(0, 2, 3, 4, 1)


def warp(image: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros") -> torch.Tensor:
    """Return ``image(x + flow(x))`` sampled on the flow's grid (``mode``: bilinear or nearest)."""
    if flow.shape[1] != 3 or flow.dim() != 5:
        raise ValueError(f"flow must be [B, 3, K, J, I], got {tuple(flow.shape)}")
    grid = _normalised_sampling_grid(flow)
    with torch.autocast(device_type=flow.device.type, enabled=False):
        out = F.grid_sample(image.float(), grid, mode=mode, padding_mode=padding_mode, align_corners=True)
    return out


def warp_labels(labels: torch.Tensor, flow: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """Warp an integer label map ``[B, 1, K, J, I]`` without mixing labels.

    Each label's indicator is warped with trilinear weights and the label of largest weight
    wins (argmax of the warped one-hot map), which is smoother than nearest-neighbour and
    never invents a label that is not present around the sampled point. ``num_classes``
    bounds memory: labels are first made contiguous ``0..n-1``.
    """
    values, contiguous = torch.unique(labels, return_inverse=True)
    n = int(values.numel()) if num_classes is None else num_classes
    best = torch.full(labels.shape, -1.0, device=labels.device)
    winner = torch.zeros(labels.shape, dtype=torch.long, device=labels.device)
    # One label at a time keeps memory at two extra volumes whatever the number of labels.
    for index in range(n):
        weight = warp((contiguous == index).float(), flow, mode="bilinear", padding_mode="zeros")
        better = weight > best
        best = torch.where(better, weight, best)
        winner = torch.where(better, torch.full_like(winner, index), winner)
    return values[winner].to(labels.dtype)


def resize_flow(flow: torch.Tensor, shape) -> torch.Tensor:
    """Resample a voxel-unit flow to another grid covering the same field of view.

    Both grids put their corner voxel centres on the same points (``align_corners``), so the
    displacement (in voxels) is scaled by ``(n_out - 1) / (n_in - 1)`` per axis.
    """
    shape = tuple(int(s) for s in shape)
    if tuple(flow.shape[2:]) == shape:
        return flow
    factors = [(o - 1) / max(i - 1, 1) for o, i in zip(shape, flow.shape[2:])]
    out = F.interpolate(flow.float(), size=shape, mode="trilinear", align_corners=True)
    return out * torch.tensor(factors, device=flow.device, dtype=out.dtype).view(1, 3, 1, 1, 1)


def compose(flow_outer: torch.Tensor, flow_inner: torch.Tensor) -> torch.Tensor:
    """Flow of ``x -> x + inner(x) + outer(x + inner(x))`` (apply ``inner`` first)."""
    return flow_inner + warp(flow_outer, flow_inner, padding_mode="border")
