"""The brain extraction: model files, the synthetic heads it trains on, inference geometry, the command."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import SHARED_DATA, rotation
from VoxelMorphRegLib.brain_mask_model import BrainMaskConfig, load_brain_mask_model, save_brain_mask_model
from VoxelMorphRegLib.errors import VoxelMorphRegError
from VoxelMorphRegLib.frontends.cli import main
from VoxelMorphRegLib.pipelines import brain_mask as bm
from VoxelMorphRegLib.tensor.head_synthesis import HeadSynthesisSettings, contrast_table, render_head
from brain_mask_stubs import SphereNetwork


@pytest.fixture
def sphere_model(monkeypatch):
    config = BrainMaskConfig()
    network = SphereNetwork(30.0, config.spacing)
    monkeypatch.setattr(bm, "load_mask_network", lambda model=None: (network, config))
    return network


def _head(size=(90, 80, 70), spacing=(1.1, 0.9, 1.6), direction=None, origin=(12.0, -7.0, 30.0), seed=0):
    rng = np.random.default_rng(seed)
    array = (rng.random(size[::-1]) * 100 + 50).astype(np.float32)  # no zero background: a whole head
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(np.asarray(direction).flatten().tolist())
    return image


def _field_of_view_centre(image):
    size = np.array(image.GetSize())
    return np.array(image.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2).tolist()))


def test_mask_lands_where_the_network_says_on_an_oblique_anisotropic_scan(sphere_model):
    image = _head(direction=rotation(0.3, -0.25, 0.6))
    result = bm.brain_mask(image, "network")
    mask = sitk.GetArrayFromImage(result.mask)
    assert result.mask.GetPixelID() == sitk.sitkUInt8 and result.mask.GetSize() == image.GetSize()
    assert result.mask.GetOrigin() == image.GetOrigin() and result.mask.GetDirection() == image.GetDirection()
    assert result.source == "network"
    # every voxel: inside the mask exactly when its physical point is within 30 mm of the sphere's
    # centre: 20 mm to the left (LIA's i axis, LPS +x) and 10 mm below (j, LPS -z) the field of view's centre
    centre = _field_of_view_centre(image) + np.array([20.0, 0.0, -10.0])
    k, j, i = np.nonzero(np.ones_like(mask))
    matrix = np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    points = np.stack([i, j, k], 1) @ matrix.T + np.array(image.GetOrigin())
    radius = np.linalg.norm(points - centre, axis=1)
    inside = mask[k, j, i] > 0
    assert inside[radius < 28.5].all() and not inside[radius > 31.5].any()
    expected = np.count_nonzero(radius < 30) * np.prod(image.GetSpacing()) / 1000  # the sphere within the field of view
    assert abs(result.volume_ml - expected) / expected < 0.03


def test_mask_is_one_piece_without_holes():
    array = np.zeros((30, 30, 30), np.uint8)
    array[5:25, 5:25, 5:25] = 1
    array[12:16, 12:16, 12:16] = 0  # a hole
    array[1:3, 1:3, 1:3] = 1  # a second, smaller piece
    mask = bm.clean_mask(sitk.GetImageFromArray(array))
    out = sitk.GetArrayFromImage(mask)
    assert out[14, 14, 14] == 1 and out[2, 2, 2] == 0 and out.sum() == 20**3


def test_a_stripped_scan_is_recognised_and_keeps_its_own_foreground(oblique_image):
    assert bm.looks_stripped(oblique_image)
    assert not bm.looks_stripped(_head())
    result = bm.brain_mask(oblique_image, "auto")
    assert result.source == "stripped"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.mask) > 0, sitk.GetArrayFromImage(oblique_image) > 0)


def test_the_stripped_scan_keeps_its_pixel_type():
    image = sitk.Cast(_head(size=(20, 20, 20)), sitk.sitkInt16)
    mask_array = np.zeros((20, 20, 20), np.uint8)
    mask_array[5:15, 5:15, 5:15] = 1
    mask = sitk.GetImageFromArray(mask_array)
    mask.CopyInformation(image)
    out = bm.stripped_image(image, mask)
    assert out.GetPixelID() == sitk.sitkInt16
    array = sitk.GetArrayFromImage(out)
    assert (array[mask_array == 0] == 0).all()
    np.testing.assert_array_equal(array[mask_array > 0], sitk.GetArrayFromImage(image)[mask_array > 0])


def test_model_file_round_trip_and_one_line_errors(tmp_path):
    config = BrainMaskConfig(features=[4, 8, 8])
    network = config.build()
    path = save_brain_mask_model(tmp_path / "m.pt", network, config)
    loaded, loaded_config, _ = load_brain_mask_model(path)
    x = torch.rand(1, 1, 16, 16, 16)
    torch.testing.assert_close(loaded(x), network.eval()(x))
    assert loaded_config.features == [4, 8, 8]
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(VoxelMorphRegError, match="bad.pt: not a readable brain mask model"):
        load_brain_mask_model(tmp_path / "bad.pt")
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(VoxelMorphRegError, match="no 'voxelmorphreg-brain-mask' header"):
        load_brain_mask_model(tmp_path / "other.pt")
    with pytest.raises(VoxelMorphRegError, match="brain mask model file not found"):
        load_brain_mask_model(tmp_path / "missing.pt")


def test_contrasts_order_the_tissues_as_real_scans_do():
    t1 = torch.tensor([1.0, 0.6, 0.15])  # white matter, grey matter, CSF in T1
    torch.testing.assert_close(contrast_table(t1, "t1"), t1)
    t2 = contrast_table(t1, "t2")
    assert t2[2] > t2[1] > t2[0]  # T2: CSF bright, white matter dark
    flair = contrast_table(t1, "flair")
    assert flair[1] > flair[0] > flair[2]  # FLAIR: CSF dark, grey above white


def _toy_head():
    """A 96^3 label map: brain (label 2 with CSF 24) inside a skull (label 507), air outside."""
    k, j, i = np.meshgrid(*(np.arange(96) - 47.5,) * 3, indexing="ij")
    r = np.sqrt(i**2 + (j / 1.1) ** 2 + k**2)
    labels = np.where(r < 30, 2, np.where(r < 33, 24, np.where(r < 40, 507, 0)))
    distance = r - 33.0
    return torch.from_numpy(labels.astype(np.float32))[None, None], torch.from_numpy(distance.astype(np.float32))[None, None]


def test_rendered_heads_are_reproducible_and_their_target_is_the_brain():
    labels, distance = _toy_head()
    table = torch.full((1024,), float("nan"))
    table[2] = 1.0
    settings = HeadSynthesisSettings(grid_size=(32, 32, 32), max_rotation=0, max_scale=0, max_shift=0, warp_mm=0, fov_cut=0, lesions=0, thick_slices=0)
    a = render_head(labels, distance, table, torch.Generator().manual_seed(3), settings, contrast="t1")
    b = render_head(labels, distance, table, torch.Generator().manual_seed(3), settings, contrast="t1")
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)
    image, target, weight = a
    assert image.shape == target.shape == weight.shape == (1, 1, 32, 32, 32)
    assert 0 <= float(image.min()) and float(image.max()) <= 1
    brain_ml = float((target < 0).sum()) * 4**3 / 1000
    assert abs(brain_ml - 4 / 3 * np.pi * 33**3 / 1000) / (4 / 3 * np.pi * 33**3 / 1000) < 0.15
    assert float(target.abs().max()) <= settings.distance_clip
    inside = image[target < -5].mean()
    assert inside > image[target > 12].mean()  # T1-like: the brain brighter than air


def test_a_cut_field_of_view_is_blank_and_out_of_the_loss():
    labels, distance = _toy_head()
    settings = HeadSynthesisSettings(grid_size=(32, 32, 32), fov_cut=1.0, lesions=0, thick_slices=0)
    image, target, weight = render_head(labels, distance, torch.full((1024,), float("nan")), torch.Generator().manual_seed(5), settings)
    cut = weight == 0
    assert 0.15 < float(cut.float().mean()) < 0.5
    assert float(image[cut].max()) == float(image.min())


# ------------------------------------------------------------------ the command


def test_brain_mask_command_writes_mask_and_stripped_scan(tmp_path, sphere_model, capsys):
    image = sitk.Cast(_head(size=(70, 60, 50)), sitk.sitkInt16)
    sitk.WriteImage(image, str(tmp_path / "head.nii.gz"))
    code = main(["brain-mask", str(tmp_path / "head.nii.gz"), "--out", str(tmp_path / "mask.nii.gz"), "--stripped", str(tmp_path / "brain.nii.gz"), "--quiet"])
    assert code == 0
    mask = sitk.ReadImage(str(tmp_path / "mask.nii.gz"))
    stripped = sitk.ReadImage(str(tmp_path / "brain.nii.gz"))
    assert mask.GetPixelID() == sitk.sitkUInt8 and stripped.GetPixelID() == sitk.sitkInt16
    assert mask.GetSize() == image.GetSize()
    np.testing.assert_allclose(mask.GetOrigin(), image.GetOrigin(), atol=1e-4)
    inside = sitk.GetArrayFromImage(mask) > 0
    assert 0 < inside.sum() < inside.size
    assert (sitk.GetArrayFromImage(stripped)[~inside] == 0).all()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


@pytest.mark.parametrize("args, message", [
    (["{tmp}/missing.nii.gz", "--out", "{tmp}/m.nii.gz"], "missing.nii.gz: no such file"),
    (["{tmp}/head.nii.gz", "--out", "{tmp}"], "is a folder"),
    (["{tmp}/head.nii.gz", "--out", "{tmp}/nowhere/m.nii.gz"], "does not exist"),
    (["{tmp}/head.nii.gz", "--out", "{tmp}/m.nii.gz", "--model", "{tmp}/bad.pt"], "bad.pt: not a readable brain mask model"),
])
def test_brain_mask_command_errors_are_one_line(tmp_path, capsys, args, message):
    sitk.WriteImage(_head(size=(20, 20, 20)), str(tmp_path / "head.nii.gz"))
    (tmp_path / "bad.pt").write_bytes(b"junk")
    code = main(["brain-mask", *[a.format(tmp=tmp_path) for a in args], "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("voxelmorphreg: error:") and message in err[0]
    assert not (tmp_path / "m.nii.gz").exists()


# ------------------------------------------------------------------ the bundled model on shared data


@pytest.mark.skipif(not (SHARED_DATA / "clinical").is_dir(), reason="shared clinical scans not found (development machines only)")
def test_bundled_model_masks_a_real_whole_head_t1():
    try:
        bm.bundled_brain_mask_model_path()
    except VoxelMorphRegError as exc:
        pytest.skip(str(exc))
    image = sitk.ReadImage(str(SHARED_DATA / "clinical" / "brainchop_t1.nii.gz"), sitk.sitkFloat32)
    result = bm.brain_mask(image, "auto")
    assert result.source == "network"
    assert 900 < result.volume_ml < 2000  # an adult brain with its CSF, not the head (about 4-5 L) nor a piece
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(SHARED_DATA / "clinical" / "brainchop_gm_wm.nii.gz")))
    mask = sitk.GetArrayFromImage(result.mask) > 0
    assert (mask[labels > 0]).mean() > 0.97  # grey and white matter are inside it


def test_the_network_grid_gives_a_tight_field_of_view_the_air_it_was_trained_with():
    """The network learnt heads inside 256 mm of air: a scan that hugs the head gets a grid of at least
    that extent, centred on its field of view, and its fine grid averages exactly onto it."""
    image = _head(size=(90, 80, 70), spacing=(1.1, 0.9, 1.6), direction=rotation(0.2, 0.1, -0.3))
    config = BrainMaskConfig()
    coarse, fine = bm.network_grids(image, config, 16)
    assert all(n * config.spacing >= bm.NETWORK_MIN_EXTENT_MM and n % 16 == 0 for n in coarse.GetSize())
    centre = np.array(coarse.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in coarse.GetSize()]))
    np.testing.assert_allclose(centre, _field_of_view_centre(image), atol=1e-6)
    assert fine.GetSize() == tuple(2 * n for n in coarse.GetSize())
    # the first 2x2x2 block of the fine grid is centred on the first coarse voxel
    block = np.mean([fine.TransformIndexToPhysicalPoint((i, j, k)) for i in (0, 1) for j in (0, 1) for k in (0, 1)], axis=0)
    np.testing.assert_allclose(block, coarse.GetOrigin(), atol=1e-6)
