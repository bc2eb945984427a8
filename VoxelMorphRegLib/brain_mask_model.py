"""Brain extraction model files: the weights of a :class:`BrainMaskUNet` and a plain-data config.

Loaded like the registration model: ``torch.load(..., weights_only=True)`` never unpickles code,
and every config field is checked, so a damaged or foreign file is a one-line error naming it.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .checkpoint import read_weights_only
from .errors import VoxelMorphRegError
from .image.io import write_bytes
from .tensor.brain_mask_network import BRAIN_MASK_FEATURES, BrainMaskUNet

FORMAT_NAME = "voxelmorphreg-brain-mask"
FORMAT_VERSION = 1


@dataclass
class BrainMaskConfig:
    features: list = field(default_factory=lambda: list(BRAIN_MASK_FEATURES))
    distance_scale: float = 10.0  # the network's output unit, mm
    spacing: float = 4.0  # mm, isotropic network grid
    orientation: str = "LIA"  # network grid axes (the label maps' own)
    intensity: dict = field(default_factory=lambda: {"method": "percentile", "low": 0.5, "high": 99.5})
    threshold_mm: float = 0.0  # the mask is where the predicted signed distance is below this
    training: dict = field(default_factory=dict)  # provenance: data, command, steps, metrics

    def build(self) -> BrainMaskUNet:
        return BrainMaskUNet(tuple(self.features), self.distance_scale)


def _checked(data, path) -> BrainMaskConfig:
    if not isinstance(data, dict):
        raise VoxelMorphRegError(f"{path}: config must be a mapping")
    config = BrainMaskConfig(**{k: v for k, v in data.items() if k in BrainMaskConfig.__dataclass_fields__})
    features = config.features
    if not isinstance(features, list) or not 2 <= len(features) <= 7 or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 512 for v in features):
        raise VoxelMorphRegError(f"{path}: config field features must be a list of 2 to 7 channel counts, got {features!r}"[:200])
    for name, low, high in (("distance_scale", 1e-3, 1e3), ("spacing", 0.5, 16.0), ("threshold_mm", -20.0, 20.0)):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise VoxelMorphRegError(f"{path}: config field {name} must be a number between {low:g} and {high:g}, got {value!r}"[:200])
    if not isinstance(config.orientation, str) or len(config.orientation) != 3:
        raise VoxelMorphRegError(f"{path}: config field orientation must be a 3-letter code such as LIA")
    return config


def save_brain_mask_model(path, network: BrainMaskUNet, config: BrainMaskConfig, extra: dict | None = None) -> Path:
    payload = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": asdict(config), "state_dict": network.state_dict()}
    payload.update(extra or {})
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return write_bytes(buffer.getvalue(), path)


def load_brain_mask_model(path, device="cpu") -> tuple[BrainMaskUNet, BrainMaskConfig, dict]:
    """``(network in eval mode, config, payload)``; one-line errors name the file."""
    payload = read_weights_only(Path(path), "brain mask model", "brain mask model", device)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise VoxelMorphRegError(f"{path}: not a VoxelMorphReg brain mask model (no '{FORMAT_NAME}' header)")
    version = payload.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version > FORMAT_VERSION:
        raise VoxelMorphRegError(f"{path}: brain mask model format {version!r} is not one this VoxelMorphReg reads ({FORMAT_VERSION})")
    config = _checked(payload.get("config"), path)
    try:
        network = config.build()
        network.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0][:160]
        raise VoxelMorphRegError(f"{path}: brain mask weights do not match its configuration ({reason})") from None
    return network.to(device).eval(), config, payload
