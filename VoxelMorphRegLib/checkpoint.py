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
from .image.io import write_bytes
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
    # Share of the refinement iterations run first on the velocity's own (coarser) grid: each costs several
    # times less there; the rest run on the model grid (``--refine-coarse-fraction`` overrides). 0 for v1.
    default_refine_coarse_fraction: float = 0.0
    # Inference runs the network both ways and keeps the antisymmetric velocity (see
    # RegistrationNetwork): swapped inputs give the exact inverse, an identical pair no motion. False for v1.
    symmetric_inference: bool = False
    training: dict = field(default_factory=dict)  # provenance: data, command, steps, hardware, metrics

    def build(self) -> RegistrationNetwork:
        return RegistrationNetwork(tuple(self.encoder_features), tuple(self.decoder_features), self.svf_level, self.integration_steps, self.symmetric_inference)

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
    return write_bytes(buffer.getvalue(), path)  # atomic; a full disk is a one-line error and keeps the earlier file


def read_weights_only(path: Path, kind: str, readable_as: str, device="cpu"):
    """``torch.load(path, weights_only=True)`` (tensors and plain containers only, never code); a
    missing file is "<path>: <kind> file not found", an unreadable one "<path>: not a readable <readable_as>"."""
    if not path.is_file():
        raise VoxelMorphRegError(f"{path}: {kind} file not found")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # truncated zip, not a torch file, pickled code...
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise VoxelMorphRegError(f"{path}: not a readable {readable_as} ({reason})") from None


def load_checkpoint(path, device="cpu") -> tuple[RegistrationNetwork, ModelConfig, dict]:
    """Return ``(network in eval mode, config, whole payload)``; one-line errors name the file."""
    path = Path(path)
    payload = read_weights_only(path, "model", "VoxelMorphReg model", device)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise VoxelMorphRegError(f"{path}: not a VoxelMorphReg model file (no '{FORMAT_NAME}' header)")
    version = payload.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise VoxelMorphRegError(f"{path}: format_version must be an integer, got {_shown(version)}")
    if version > FORMAT_VERSION:
        raise VoxelMorphRegError(f"{path}: model format {version} is newer than this VoxelMorphReg reads ({FORMAT_VERSION}); update VoxelMorphReg")
    config = checked_config(payload.get("config"), path)
    if not isinstance(payload.get("state_dict"), dict):
        raise VoxelMorphRegError(f"{path}: holds no weights (state_dict missing or not a mapping)")
    try:
        network = config.build()
        network.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0][:160]
        raise VoxelMorphRegError(f"{path}: model weights do not match its configuration ({reason})") from None
    return network.to(device).eval(), config, payload


# ---------------------------------------------------------------------- config checks

_ORIENTATION_AXES = ("RL", "AP", "SI")


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _integer(value, low: int, high: int) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be an integer between {low} and {high}"
    return None if low <= value <= high else f"must be between {low} and {high}"


def _number(value, low: float, high: float, low_open: bool = False) -> str | None:
    bound = ">" if low_open else ">="
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value in (float("inf"), float("-inf")):
        return f"must be a finite number {bound} {low:g}"
    if value < low or (low_open and value == low) or value > high:
        return f"must be a finite number {bound} {low:g} and <= {high:g}"
    return None


def _features(value, low_count: int, high_count: int) -> str | None:
    if not isinstance(value, list) or not low_count <= len(value) <= high_count:
        return f"must be a list of {low_count} to {high_count} channel counts"
    if any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1024 for v in value):
        return "must hold channel counts between 1 and 1024"
    return None


def _orientation(value) -> str | None:
    axes = sorted(a for letter in value for a, pair in enumerate(_ORIENTATION_AXES) if letter in pair) if isinstance(value, str) else []
    if not isinstance(value, str) or len(value) != 3 or axes != [0, 1, 2]:
        return "must be a 3-letter orientation code with one of R/L, A/P and S/I each (such as LIA)"
    return None


def _intensity(value) -> str | None:
    if not isinstance(value, dict):
        return "must be a mapping such as {'method': 'percentile', 'low': 0.5, 'high': 99.5}"
    if value.get("method", "percentile") != "percentile":
        return "method must be 'percentile'"
    low, high = value.get("low", 0.5), value.get("high", 99.5)
    if _number(low, 0, 100) or _number(high, 0, 100) or not low < high:
        return "low and high must be percentiles with 0 <= low < high <= 100"
    return None


def checked_config(data, path) -> ModelConfig:
    """A checkpoint's config with every field checked for type and range; one-line errors name the file and the field.

    Fields this version does not know are ignored (a newer file may add some); absent fields take the defaults."""
    if not isinstance(data, dict):
        raise VoxelMorphRegError(f"{path}: config must be a mapping, got {_shown(data)}")
    config = ModelConfig.from_dict(data)
    levels = len(config.encoder_features) - 1 if isinstance(config.encoder_features, list) else 0
    checks = {
        "encoder_features": lambda v: _features(v, 2, 8),
        "decoder_features": lambda v: _features(v, 0, 8),
        "svf_level": lambda v: _integer(v, 0, max(levels - 1, 0)),
        "integration_steps": lambda v: _integer(v, 0, 20),
        "spacing": lambda v: None if isinstance(v, list) and len(v) == 3 and not any(_number(s, 0, 20, low_open=True) for s in v) else "must be a list of 3 voxel sizes in mm, each > 0 and <= 20",
        "orientation": _orientation,
        "intensity": _intensity,
        "default_refine_iterations": lambda v: _integer(v, 0, 100000),
        "default_refine_smoothness": lambda v: _number(v, 0, 1e6),
        "default_refine_learning_rate": lambda v: _number(v, 0, 100, low_open=True),
        "default_refine_coarse_fraction": lambda v: _number(v, 0, 1),
        "symmetric_inference": lambda v: None if isinstance(v, bool) else "must be true or false",
        "training": lambda v: None if isinstance(v, dict) else "must be a mapping",
    }
    for name, check in checks.items():
        value = getattr(config, name)
        problem = check(value)
        if problem:
            raise VoxelMorphRegError(f"{path}: config field {name} {problem}, got {_shown(value)}")
    return config


ARCHITECTURE_FIELDS = ("encoder_features", "decoder_features", "svf_level", "spacing", "orientation", "intensity")


def check_resumable(path, config: ModelConfig, device="cpu") -> dict:
    """The payload of ``path`` (a ``last.pt`` to resume from) if it was trained with ``config``'s
    architecture, model grid and intensity scaling; else a one-line error naming what differs."""
    _, saved, payload = load_checkpoint(path, device)
    for name in ARCHITECTURE_FIELDS:
        theirs, ours = getattr(saved, name), getattr(config, name)
        if (list(theirs) if isinstance(theirs, (list, tuple)) else theirs) != (list(ours) if isinstance(ours, (list, tuple)) else ours):
            raise VoxelMorphRegError(
                f"{path}: cannot resume: it was trained with {name} {_shown(theirs)}, this run asks for {_shown(ours)}; "
                "run with the options it was trained with, or train into another --out folder"
            )
    return payload
