"""The bundled model: found where docs/MODELS.md says, loads safely, and does what its card says."""

import re

import torch
from conftest import ROOT, blob_volume

from VoxelMorphRegLib.checkpoint import load_checkpoint
from VoxelMorphRegLib.model_resolution import BUNDLED_MODEL_FILES, bundled_model_path

CARD = bundled_model_path().with_suffix(".md")


def test_the_bundled_model_is_found_and_loads_without_unpickling_code():
    path = bundled_model_path()
    assert path.name in BUNDLED_MODEL_FILES and path.parent == ROOT / "Resources" / "Models" and path.is_file()
    network, config, payload = load_checkpoint(path)
    assert payload["format"] == "voxelmorphreg-checkpoint"
    assert (config.orientation, config.spacing, config.svf_level) == ("LIA", [2.0, 2.0, 2.0], 1)
    assert sum(p.numel() for p in network.parameters()) == 266_355  # the card's parameter count


def test_the_refinement_defaults_are_the_ones_the_card_and_the_models_page_quote():
    _, config, _ = load_checkpoint(bundled_model_path())
    card = CARD.read_text()
    quoted = {name: float(value) for name, value in re.findall(r"`default_refine_(\w+) = ([\d.]+)`", card)}
    assert quoted == {"iterations": config.default_refine_iterations, "smoothness": config.default_refine_smoothness, "learning_rate": config.default_refine_learning_rate,
                      "coarse_fraction": config.default_refine_coarse_fraction}
    page = " ".join((ROOT / "docs" / "MODELS.md").read_text().split())
    assert f"refine each pair by default ({config.default_refine_iterations} iterations, smoothness weight {config.default_refine_smoothness:g}" in page


def test_without_a_model_the_optimisation_runs_the_schedule_the_command_line_page_quotes():
    """``--model none`` starts from zero and needs v1's longer two-level schedule, not v2's 10 steps."""
    from VoxelMorphRegLib.pipelines.loaded_model import load_model

    refinement = load_model("none").refinement
    page = " ".join((ROOT / "docs" / "COMMAND_LINE.md").read_text().split())
    quoted = f"`--model none` is classical optimisation from a zero velocity: {refinement['iterations']} iterations, {refinement['coarse_iterations']} of them on the coarse grid, W = {refinement['smoothness']:g}, step {refinement['learning_rate']:g}"
    assert quoted in page, quoted
    assert (refinement["iterations"], refinement["coarse_iterations"]) == (120, 80)


def test_the_bundled_model_leaves_an_identical_pair_alone():
    """Identical images must give no displacement. v2 runs its network both ways and keeps the
    antisymmetric velocity, so the network alone gives exactly none (v1, one way, predicted 0.4
    voxel of flow, see its card); the default refinement then has nothing to improve and keeps it."""
    import numpy as np
    import SimpleITK as sitk

    from VoxelMorphRegLib.pipelines.register import RegisterOptions, register_images

    _, config, _ = load_checkpoint(bundled_model_path())
    assert config.symmetric_inference is True
    image = blob_volume(size=(48, 48, 48), spacing=(2.0, 2.0, 2.0))
    inside = sitk.GetArrayFromImage(image) > 0.2
    lengths = {}
    for name, refine in (("network", 0), ("default", None)):
        result = register_images(image, image, RegisterOptions(affine=False, qc=False, refine_iterations=refine), log=lambda message: None)
        field = sitk.GetArrayFromImage(result.displacement)
        lengths[name] = np.linalg.norm(field[inside], axis=1)
    assert lengths["network"].max() == 0, lengths["network"].max()
    assert lengths["default"].mean() < 0.05 and lengths["default"].max() < 0.5, (lengths["default"].mean(), lengths["default"].max())
