"""A model prepared once and used for any number of pairs.

:func:`load_model` resolves the spec (:mod:`..model_resolution`), reads the checkpoint, puts the
network on its device and settles the refinement (options where given, else the model's own
defaults). :func:`pipelines.register.register_images` takes it as ``model=``; evaluate, the
benchmark and batch registration load it once and pass it for every pair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import SimpleITK as sitk
import torch

from ..checkpoint import ModelConfig, load_checkpoint
from ..contract import RegisterOptions
from ..errors import VoxelMorphRegError
from ..image.model_grid import orientation_of
from ..model_resolution import resolve_model_path
from ..tensor.devices import select_device
from ..tensor.registration_network import RegistrationNetwork

# Per-pair optimisation without a model (``--model none``): v1 revision 3's two-level schedule. From a
# zero velocity it needs far more than the bundled v2 model's 10 steps (see docs/MODELS.md).
DEFAULT_NONE_REFINEMENT = 120
DEFAULT_NONE_SMOOTHNESS = 0.3
DEFAULT_NONE_LEARNING_RATE = 0.2
DEFAULT_NONE_COARSE_FRACTION = 0.6667  # 80 of the 120 iterations on the velocity's grid
MAX_INTEGRATION_STEPS = 20


@dataclass
class LoadedModel:
    """A network on its device with its config and the refinement a run uses."""

    network: RegistrationNetwork | None  # eval mode, on ``device``; None for "none" (optimisation only)
    config: ModelConfig
    description: str  # the file, or "none (optimisation only)"; metrics.json's "model"
    path: Path | None
    device: torch.device
    refinement: dict  # {"iterations", "smoothness", "learning_rate"}
    integration_steps: int  # scaling-and-squaring steps used (the option, else the config's)
    _integrator: RegistrationNetwork | None = None  # "none": an untrained network of the config, for its integration only

    @property
    def has_network(self) -> bool:
        return self.network is not None

    def config_for(self, fixed: sitk.Image) -> ModelConfig:
        """The config of a pair: without a network the model grid takes the fixed image's axes."""
        if self.network is None and fixed is not None:
            return replace(self.config, orientation=orientation_of(fixed))
        return self.config

    def module(self) -> RegistrationNetwork:
        """The network (or, without one, a network of the config for integration), its steps set."""
        if self.network is not None:
            model = self.network
        else:
            if self._integrator is None:
                self._integrator = self.config.build().eval()
            model = self._integrator
        model.integration_steps = self.integration_steps
        return model

    def with_options(self, options: RegisterOptions) -> "LoadedModel":
        """The same network with the refinement and integration steps of ``options`` (model and
        device stay this model's)."""
        refinement = refinement_settings(options, self.config, self.has_network, self.description)
        return replace(self, refinement=refinement, integration_steps=_integration_steps(options, self.config))


def load_model(options: RegisterOptions | str | None = None) -> LoadedModel:
    """Load ``options.model`` ("bundled", "none" or a file) onto ``options.device``, with the
    refinement ``options`` ask for; a plain string is a model spec with default options."""
    if options is None or isinstance(options, (str, Path)):
        options = RegisterOptions(model=str(options) if options is not None else "bundled")
    device = select_device(options.device)
    path = resolve_model_path(options.model)
    if path is None:
        network = None
        config = ModelConfig(default_refine_iterations=DEFAULT_NONE_REFINEMENT, default_refine_smoothness=DEFAULT_NONE_SMOOTHNESS,
                             default_refine_learning_rate=DEFAULT_NONE_LEARNING_RATE, default_refine_coarse_fraction=DEFAULT_NONE_COARSE_FRACTION)
        description = "none (optimisation only)"
    else:
        network, config, _ = load_checkpoint(path)
        network = network.to(device).eval()
        description = str(path)
    refinement = refinement_settings(options, config, network is not None, description)
    return LoadedModel(network, config, description, path, device, refinement, _integration_steps(options, config))


def _integration_steps(options: RegisterOptions, config: ModelConfig) -> int:
    if options.integration_steps is None:
        return int(config.integration_steps)
    if not 0 <= options.integration_steps <= MAX_INTEGRATION_STEPS:
        raise VoxelMorphRegError(f"--integration-steps must be between 0 and {MAX_INTEGRATION_STEPS}, got {options.integration_steps}")
    return int(options.integration_steps)


def refinement_settings(options: RegisterOptions, config: ModelConfig, has_network: bool, model_name: str = "the model") -> dict:
    """The refinement's iterations, smoothness weight and step size: the options where given, else
    the model's defaults (``load_model`` gives ``--model none`` its own). Each value is checked
    where it comes from; a bad one gets a one-line error naming the option or the model that set it."""

    def chosen(option, flag: str, field: str, kind=float):
        source, value = (flag, option) if option is not None else (f"{model_name}: {field}", getattr(config, field))
        try:
            value = kind(value)
        except (TypeError, ValueError):
            raise VoxelMorphRegError(f"{source} must be a number, got {value!r}") from None
        if not math.isfinite(value):
            raise VoxelMorphRegError(f"{source} must be a finite number, got {value}")
        return source, value

    source, iterations = chosen(options.refine_iterations, "--refine", "default_refine_iterations", int)
    if iterations < 0:
        raise VoxelMorphRegError(f"{source} must be >= 0, got {iterations}")
    if not has_network and iterations == 0:
        raise VoxelMorphRegError(f"--model none has no network: it needs --refine N with N > 0 (default {DEFAULT_NONE_REFINEMENT})")
    source, smoothness = chosen(options.refine_smoothness, "--refine-smoothness", "default_refine_smoothness")
    if smoothness < 0:
        raise VoxelMorphRegError(f"{source} must be a finite number >= 0, got {smoothness}")
    source, learning_rate = chosen(options.refine_learning_rate, "--refine-learning-rate", "default_refine_learning_rate")
    if learning_rate <= 0:
        raise VoxelMorphRegError(f"{source} must be a finite number > 0, got {learning_rate}")
    source, coarse_fraction = chosen(getattr(options, "refine_coarse_fraction", None), "--refine-coarse-fraction", "default_refine_coarse_fraction")
    if not 0 <= coarse_fraction <= 1:
        raise VoxelMorphRegError(f"{source} must be between 0 and 1, got {coarse_fraction}")
    coarse = int(round(iterations * coarse_fraction))
    return {"iterations": iterations, "smoothness": smoothness, "learning_rate": learning_rate, "coarse_fraction": coarse_fraction,
            "coarse_iterations": coarse, "fine_iterations": iterations - coarse}
