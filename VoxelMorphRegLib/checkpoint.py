"""Model checkpoints: one file with the weights and a plain-data config.

Loading never unpickles code: ``torch.load(..., weights_only=True)`` only accepts tensors and
plain containers, and the config is plain data (numbers, strings, lists, dicts).
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .errors import VoxelMorphRegError
from .image.io import atomic_path
from .tensor.registration_network import INTEGRATION_STEPS, RegistrationNetwork
from .tensor.unet import ENCODER_FEATURES, SVF_LEVEL, decoder_features_for

FORMAT_VERSION = 1
FORMAT_NAME = "voxelmorphreg-checkpoint"


@dataclass
class ModelConfig:
    # Architecture: the defaults of tensor.unet / tensor.registration_network (the bundled v1 model's).
    encoder_features: list = field(default_factory=lambda: list(ENCODER_FEATURES))
    decoder_features: list = field(default_factory=lambda: list(decoder_features_for(SVF_LEVEL)))
    svf_level: int = SVF_LEVEL
    integration_steps: int = INTEGRATION_STEPS
    spacing: list = field(default_factory=lambda: [2.0, 2.0, 2.0])  # model grid, mm
    orientation: str = "LIA"  # model grid axes, SimpleITK orientation code
    intensity: dict = field(default_factory=lambda: {"method": "percentile", "low": 0.5, "high": 99.5})
    # Per-pair refinement iterations `register` runs by default with this model (``--refine``
    # overrides): 0 for a model that is good alone; more for one whose card shows refinement helps.
    default_refine_iterations: int = 0
    # The refinement's loss weight on velocity smoothness and its Adam step size (``--refine-smoothness``
    # and ``--refine-learning-rate`` override); tuned with the model and quoted on its card.
    default_refine_smoothness: float = 1.0
    default_refine_learning_rate: float = 0.1
    training: dict = field(default_factory=dict)  # provenance: data, command, steps, hardware, metrics

    def build(self) -> RegistrationNetwork:
        return RegistrationNetwork(tuple(self.encoder_features), tuple(self.decoder_features), self.svf_level, self.integration_steps)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def save_checkpoint(path, model: torch.nn.Module, config: ModelConfig, extra: dict | None = None) -> Path:
    """Write weights + config (and optional resumable state, plain tensors only) atomically."""
    path = Path(path)
    payload = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": asdict(config), "state_dict": model.state_dict()}
    if extra:
        payload.update(extra)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(path) as temporary:
        Path(temporary).write_bytes(buffer.getvalue())
    return path


def load_checkpoint(path, device="cpu") -> tuple[RegistrationNetwork, ModelConfig, dict]:
    """Return ``(network in eval mode, config, whole payload)``; one-line errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise VoxelMorphRegError(f"{path}: model file not found")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # truncated zip, not a torch file, pickled code...
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise VoxelMorphRegError(f"{path}: not a readable VoxelMorphReg model ({reason})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise VoxelMorphRegError(f"{path}: not a VoxelMorphReg model file (no '{FORMAT_NAME}' header)")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise VoxelMorphRegError(f"{path}: model format {payload.get('format_version')} is newer than this VoxelMorphReg reads ({FORMAT_VERSION}); update VoxelMorphReg")
    try:
        config = ModelConfig.from_dict(payload["config"])
        network = config.build()
        network.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0][:160]
        raise VoxelMorphRegError(f"{path}: model weights do not match its configuration ({reason})") from None
    return network.to(device).eval(), config, payload
