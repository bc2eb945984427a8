"""Which torch device a run uses."""

from __future__ import annotations

import torch

from ..errors import VoxelMorphRegError


def select_device(requested: str) -> torch.device:
    """``auto`` (CUDA when there is one, else CPU), ``cpu`` or ``cuda`` (an error without CUDA)."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise VoxelMorphRegError("CUDA was requested but no CUDA device is available (use --device cpu or auto)")
        return torch.device("cuda")
    if requested == "cpu":
        return torch.device("cpu")
    raise VoxelMorphRegError(f"unknown device {requested!r}; choose auto, cpu or cuda")
