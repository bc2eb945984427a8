"""Hostile or damaged checkpoint configs: one line naming the file and the field, never a traceback."""

import pytest
import SimpleITK as sitk
import torch
from conftest import blob_volume

from VoxelMorphRegLib.checkpoint import FORMAT_NAME, ModelConfig, check_resumable, load_checkpoint, save_checkpoint
from VoxelMorphRegLib.errors import VoxelMorphRegError
from VoxelMorphRegLib.frontends.cli import main


def tiny(**changes):
    return ModelConfig(encoder_features=[4, 8, 8], decoder_features=[8], svf_level=1, **changes)


def hostile(tmp_path, name, **config_changes):
    """A model file whose weights are fine but whose config has ``config_changes`` (any type)."""
    config = tiny()
    path = tmp_path / f"{name}.pt"
    save_checkpoint(path, config.build(), config)
    payload = torch.load(path, weights_only=True)
    payload["config"].update(config_changes)
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("field, value, fragment", [
    ("spacing", [0.0, 2.0, 2.0], "spacing must be a list of 3 voxel sizes"),
    ("spacing", "2mm", "spacing must be a list of 3 voxel sizes"),
    ("orientation", "LIX", "orientation must be a 3-letter orientation code"),
    ("integration_steps", 1000, "integration_steps must be between 0 and 20"),
    ("intensity", "percentile", "intensity must be a mapping"),
    ("intensity", {"method": "percentile", "low": 99.0, "high": 1.0}, "intensity low and high must be percentiles"),
    ("svf_level", 7, "svf_level must be between 0 and 1"),
    ("encoder_features", [4, "8", 8], "encoder_features must hold channel counts"),
    ("default_refine_iterations", 2.5, "default_refine_iterations must be an integer"),
    ("default_refine_learning_rate", float("nan"), "default_refine_learning_rate must be a finite number > 0"),
    ("symmetric_inference", "yes", "symmetric_inference must be true or false"),
    ("training", "yesterday", "training must be a mapping"),
])
def test_every_config_field_is_checked(tmp_path, field, value, fragment):
    path = hostile(tmp_path, "hostile", **{field: value})
    with pytest.raises(VoxelMorphRegError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert message.startswith(f"{path}: config field {field} ") and fragment in message and "\n" not in message, message


def test_a_config_that_is_not_a_mapping_and_a_bad_version(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"format": FORMAT_NAME, "format_version": 1, "config": "a string", "state_dict": {}}, path)
    with pytest.raises(VoxelMorphRegError, match="config must be a mapping"):
        load_checkpoint(path)
    torch.save({"format": FORMAT_NAME, "format_version": "1", "config": {}, "state_dict": {}}, path)
    with pytest.raises(VoxelMorphRegError, match="format_version must be an integer"):
        load_checkpoint(path)
    torch.save({"format": FORMAT_NAME, "format_version": 1, "config": {}, "state_dict": [1, 2]}, path)
    with pytest.raises(VoxelMorphRegError, match="holds no weights"):
        load_checkpoint(path)


def test_the_command_line_names_the_model_and_the_field(tmp_path, capsys):
    image = tmp_path / "image.nii.gz"
    sitk.WriteImage(blob_volume(size=(24, 24, 24)), str(image))
    path = hostile(tmp_path, "steps", integration_steps=1000)
    code = main(["register", str(image), str(image), "--out", str(tmp_path / "out"), "--model", str(path), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"voxelmorphreg: error: {path}: config field integration_steps must be between 0 and 20, got 1000"]


def test_resuming_into_a_folder_trained_with_another_architecture(tmp_path):
    config = tiny()
    last = tmp_path / "last.pt"
    save_checkpoint(last, config.build(), config, extra={"step": 5})
    assert check_resumable(last, tiny())["step"] == 5
    other = ModelConfig(encoder_features=[4, 8, 16], decoder_features=[8], svf_level=1)
    with pytest.raises(VoxelMorphRegError, match=r"last.pt: cannot resume: it was trained with encoder_features \[4, 8, 8\], this run asks for \[4, 8, 16\]"):
        check_resumable(last, other)
    with pytest.raises(VoxelMorphRegError, match="cannot resume: it was trained with spacing"):
        check_resumable(last, tiny(spacing=[1.5, 1.5, 1.5]))


def test_symmetric_inference_survives_a_round_trip_and_defaults_off(tmp_path):
    """A model file says whether it runs both ways; older files (no field) run one way as before."""
    on = tmp_path / "on.pt"
    save_checkpoint(on, tiny(symmetric_inference=True).build(), tiny(symmetric_inference=True))
    network, config, _ = load_checkpoint(on)
    assert config.symmetric_inference is True and network.symmetric is True
    older = hostile(tmp_path, "older")
    payload = torch.load(older, weights_only=True)
    del payload["config"]["symmetric_inference"]
    torch.save(payload, older)
    network, config, _ = load_checkpoint(older)
    assert config.symmetric_inference is False and network.symmetric is False
