"""The bundled model: found where the README says, loads safely, and does what its card says."""

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


def test_the_refinement_defaults_are_the_ones_the_card_and_readme_quote():
    _, config, _ = load_checkpoint(bundled_model_path())
    card = CARD.read_text()
    quoted = {name: float(value) for name, value in re.findall(r"`default_refine_(\w+) = ([\d.]+)`", card)}
    assert quoted == {"iterations": config.default_refine_iterations, "smoothness": config.default_refine_smoothness, "learning_rate": config.default_refine_learning_rate,
                      "coarse_fraction": config.default_refine_coarse_fraction}
    from VoxelMorphRegLib.pipelines import loaded_model

    none = (loaded_model.DEFAULT_NONE_REFINEMENT, loaded_model.DEFAULT_NONE_SMOOTHNESS, loaded_model.DEFAULT_NONE_LEARNING_RATE, loaded_model.DEFAULT_NONE_COARSE_FRACTION)
    assert none == (config.default_refine_iterations, config.default_refine_smoothness, config.default_refine_learning_rate, config.default_refine_coarse_fraction)  # --model none: the same settings
    readme = (ROOT / "README.md").read_text()
    assert f"refine each pair by default ({config.default_refine_iterations} iterations, smoothness weight {config.default_refine_smoothness:g}" in readme


def test_the_default_pipeline_leaves_an_aligned_pair_alone():
    """Identical images must give (almost) no displacement with the model's defaults. The network
    alone does not: v1 predicts about 0.4 voxel of flow for identical inputs (see its card), and
    the default refinement is what removes it."""
    import numpy as np
    import SimpleITK as sitk

    from VoxelMorphRegLib.pipelines.register import RegisterOptions, register_images

    image = blob_volume(size=(48, 48, 48), spacing=(2.0, 2.0, 2.0))
    inside = sitk.GetArrayFromImage(image) > 0.2
    lengths = {}
    for name, refine in (("network", 0), ("default", None)):
        result = register_images(image, image, RegisterOptions(affine=False, qc=False, refine_iterations=refine), log=lambda message: None)
        field = sitk.GetArrayFromImage(result.displacement)
        lengths[name] = np.linalg.norm(field[inside], axis=1)
    assert lengths["default"].mean() < 0.1 and lengths["default"].max() < 1.0, (lengths["default"].mean(), lengths["default"].max())
    assert lengths["default"].mean() < 0.25 * lengths["network"].mean()  # the refinement does remove the bias
