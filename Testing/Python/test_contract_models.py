"""One place decides the model: bundled/none/path, the preferred bundled file, the architecture defaults, a reusable loaded model."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import ROOT, blob_volume

from VoxelMorphRegLib import model_resolution
from VoxelMorphRegLib.checkpoint import ModelConfig, save_checkpoint
from VoxelMorphRegLib.contract import RegisterOptions
from VoxelMorphRegLib.errors import VoxelMorphRegError
from VoxelMorphRegLib.pipelines.loaded_model import load_model
from VoxelMorphRegLib.pipelines.register import register_images
from VoxelMorphRegLib.tensor.registration_network import RegistrationNetwork
from VoxelMorphRegLib.tensor.unet import VelocityUNet


def test_bundled_prefers_the_newest_model_present(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        folder.mkdir()
    monkeypatch.setattr(model_resolution, "model_search_path", lambda: [first, second])
    (first / "voxelmorphreg_v1.pt").write_bytes(b"x")
    assert model_resolution.bundled_model_path() == first / "voxelmorphreg_v1.pt"
    (second / "voxelmorphreg_v2.pt").write_bytes(b"x")  # a newer model wins over the search order
    assert model_resolution.bundled_model_path() == second / "voxelmorphreg_v2.pt"
    assert model_resolution.bundled_models() == [second / "voxelmorphreg_v2.pt", first / "voxelmorphreg_v1.pt"]
    (first / "voxelmorphreg_v2.pt").write_bytes(b"x")  # the same file in two places: the first place wins
    assert model_resolution.resolve_model_path("bundled") == model_resolution.resolve_model_path(None) == first / "voxelmorphreg_v2.pt"


def test_the_shipped_model_is_found_through_the_environment_folder_first(tmp_path, monkeypatch):
    monkeypatch.setenv(model_resolution.MODEL_DIR_VARIABLE, str(tmp_path))
    assert model_resolution.model_search_path()[:2] == [tmp_path, ROOT / "Resources" / "Models"]
    assert model_resolution.bundled_model_path().parent == ROOT / "Resources" / "Models"  # nothing in the folder: the checkout's
    (tmp_path / model_resolution.BUNDLED_MODEL_FILES[0]).write_bytes(b"x")
    assert model_resolution.bundled_model_path() == tmp_path / model_resolution.BUNDLED_MODEL_FILES[0]


def test_none_and_paths(tmp_path):
    assert model_resolution.resolve_model_path("none") is None
    with pytest.raises(VoxelMorphRegError, match="model file not found"):
        model_resolution.resolve_model_path(tmp_path / "missing.pt")


def test_no_bundled_model_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setattr(model_resolution, "model_search_path", lambda: [tmp_path])
    with pytest.raises(VoxelMorphRegError, match="bundled model voxelmorphreg_v2.pt or voxelmorphreg_v1.pt not found"):
        model_resolution.bundled_model_path()


def _shapes(module):
    return [tuple(p.shape) for p in module.parameters()]


def test_the_architecture_defaults_agree():
    config = ModelConfig()
    assert _shapes(config.build()) == _shapes(RegistrationNetwork()) == [tuple(p.shape) for p in VelocityUNet().parameters()]
    assert RegistrationNetwork().integration_steps == config.integration_steps and RegistrationNetwork().unet.svf_level == config.svf_level
    bundled = torch.load(ROOT / "Resources" / "Models" / "voxelmorphreg_v1.pt", map_location="cpu", weights_only=True)["config"]  # the defaults are v1's
    assert {k: bundled[k] for k in ("encoder_features", "decoder_features", "svf_level", "integration_steps")} == {
        "encoder_features": config.encoder_features, "decoder_features": config.decoder_features, "svf_level": config.svf_level, "integration_steps": config.integration_steps}


def test_a_loaded_model_gives_what_a_fresh_load_gives_for_every_pair(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig(encoder_features=[4, 8, 8], decoder_features=[8], svf_level=1, default_refine_iterations=2)
    network = config.build()
    with torch.no_grad():
        network.unet.head.weight.normal_(0, 0.05)  # a model that moves things
    path = save_checkpoint(tmp_path / "m.pt", network, config)
    options = RegisterOptions(model=str(path), affine=False, qc=False)
    loaded = load_model(options)
    assert loaded.refinement == {"iterations": 2, "smoothness": 1.0, "learning_rate": 0.1, "coarse_fraction": 0.0, "coarse_iterations": 0, "fine_iterations": 2} and loaded.path == path
    quiet = lambda message: None  # noqa: E731
    for seed in (1, 2):
        fixed, moving = blob_volume(size=(20, 20, 16), spacing=(2.0, 2.0, 2.0)), blob_volume(size=(20, 20, 16), spacing=(2.0, 2.0, 2.0), seed=seed)
        fresh = register_images(fixed, moving, options, log=quiet)
        reused = register_images(fixed, moving, options, log=quiet, model=loaded)
        assert np.array_equal(sitk.GetArrayFromImage(fresh.displacement), sitk.GetArrayFromImage(reused.displacement))
        assert fresh.metrics["model"] == reused.metrics["model"] == str(path)
    network_only = loaded.with_options(RegisterOptions(refine_iterations=0))
    assert network_only.network is loaded.network and network_only.refinement["iterations"] == 0 and loaded.refinement["iterations"] == 2
    assert register_images(fixed, moving, options, log=quiet, model=network_only).metrics["refine_iterations"] == 0
