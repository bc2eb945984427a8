"""Per-pair refinement: the coarse level recovers a known shift cheaply, the schedule comes from the
model (or the option) and reaches the optimiser, and a bad share is a one-line error."""

import json

import pytest
import torch
from conftest import blob_volume

from VoxelMorphRegLib.checkpoint import ModelConfig, save_checkpoint
from VoxelMorphRegLib.frontends.cli import main
from VoxelMorphRegLib.pipelines import register
from VoxelMorphRegLib.tensor.integration import integrate_velocity
from VoxelMorphRegLib.tensor.refinement import on_grid, refine_velocity
from VoxelMorphRegLib.tensor.warping import resize_flow


def shifted_pair(shift_voxels=2.0):
    import SimpleITK as sitk

    fixed = sitk.GetArrayFromImage(blob_volume(size=(48, 48, 48)))
    fixed_t = torch.from_numpy(fixed)[None, None].float()
    flow = torch.zeros(1, 3, 48, 48, 48)
    flow[:, 2] = -shift_voxels  # the moving image is the fixed one moved by +shift along i
    moving_t = torch.nn.functional.grid_sample(fixed_t, _grid(flow), align_corners=True)
    return moving_t, fixed_t


def _grid(flow):
    from VoxelMorphRegLib.tensor.warping import _normalised_sampling_grid

    return _normalised_sampling_grid(flow)


def test_the_coarse_level_alone_recovers_a_known_shift():
    moving, fixed = shifted_pair(2.0)
    shape = moving.shape[2:]
    velocity = torch.zeros(1, 3, 24, 24, 24)  # the velocity's grid: half the images'

    def to_flow(v):
        return resize_flow(integrate_velocity(v, 7), shape)

    refined = refine_velocity(moving, fixed, velocity, to_flow, iterations=0, coarse_iterations=60, smoothness_weight=0.1, learning_rate=0.2)
    flow = to_flow(refined)[0]
    inside = fixed[0, 0] > 0.3
    # warped(x) = moving(x + u(x)) = fixed(x) needs u = +2 voxels along i, 0 along k and j
    assert float(flow[2][inside].median()) == pytest.approx(2.0, abs=0.5)
    assert float(flow[0][inside].abs().median()) < 0.3 and float(flow[1][inside].abs().median()) < 0.3


def test_a_pair_that_cannot_be_improved_keeps_its_velocity():
    """An identical pair from a zero velocity is already at the loss's minimum: Adam's first steps
    (about learning_rate each, whatever the gradient) make it worse, so the refinement hands back
    the velocity it came with instead of the noise, on both levels. A shifted pair still moves."""
    fixed, _ = shifted_pair(0.0)
    shape = fixed.shape[2:]
    losses = []

    def to_flow(v):
        return resize_flow(integrate_velocity(v, 7), shape)

    start = torch.zeros(1, 3, 24, 24, 24)
    refined = refine_velocity(fixed, fixed, start, to_flow, iterations=6, coarse_iterations=4, smoothness_weight=0.3, learning_rate=0.2,
                              progress=lambda i, n, loss: losses.append(loss))
    assert len(losses) == 10 and max(losses[1:4]) > losses[0] and max(losses[5:]) > losses[4]  # the steps did make it worse
    assert torch.equal(refined, start)
    moving, fixed = shifted_pair(2.0)
    refined = refine_velocity(moving, fixed, start, to_flow, iterations=6, coarse_iterations=4, smoothness_weight=0.3, learning_rate=0.2)
    assert float(to_flow(refined)[0, 2][fixed[0, 0] > 0.3].median()) > 0.5


def test_on_grid_keeps_the_field_of_view():
    image = torch.zeros(1, 1, 9, 9, 9)
    image[..., 8] = 1.0  # the last slice along i
    coarse = on_grid(image, (5, 5, 5))
    assert coarse.shape[2:] == (5, 5, 5)
    assert float(coarse[..., 4].mean()) > 0.3 and float(coarse[..., :3].max()) == 0.0  # corners stay corners


def test_the_model_s_coarse_share_reaches_the_optimiser_and_an_option_overrides_it(monkeypatch, tmp_path):
    import SimpleITK as sitk

    fixed = blob_volume(size=(32, 32, 32))
    moving = blob_volume(size=(32, 32, 32), seed=1)
    sitk.WriteImage(fixed, str(tmp_path / "f.nii.gz"))
    sitk.WriteImage(moving, str(tmp_path / "m.nii.gz"))
    model = tmp_path / "weights.pt"
    config = ModelConfig(encoder_features=[4, 8, 8], decoder_features=[8], svf_level=1, default_refine_iterations=8, default_refine_coarse_fraction=0.75)
    save_checkpoint(model, config.build(), config)
    seen = []
    real = register.refine_velocity

    def recording(*args, **kwargs):
        seen.append((kwargs["coarse_iterations"], args[4]))
        return real(*args, **kwargs)

    monkeypatch.setattr(register, "refine_velocity", recording)
    common = ["register", str(tmp_path / "f.nii.gz"), str(tmp_path / "m.nii.gz"), "--model", str(model), "--no-affine", "--no-qc", "--quiet"]
    assert main(common + ["--out", str(tmp_path / "a")]) == 0
    assert main(common + ["--out", str(tmp_path / "b"), "--refine-coarse-fraction", "0.25"]) == 0
    assert seen == [(6, 2), (2, 6)]
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["refine_coarse_iterations"] == 6


def test_a_coarse_share_outside_0_to_1_is_a_one_line_error(tmp_path, capsys):
    import SimpleITK as sitk

    sitk.WriteImage(blob_volume(size=(32, 32, 32)), str(tmp_path / "f.nii.gz"))
    code = main(["register", str(tmp_path / "f.nii.gz"), str(tmp_path / "f.nii.gz"), "--model", "none", "--no-affine", "--refine", "2",
                 "--refine-coarse-fraction", "1.5", "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 2
    assert "--refine-coarse-fraction must be between 0 and 1, got 1.5" in capsys.readouterr().err


def test_the_refinement_adam_takes_torch_adams_steps():
    torch.manual_seed(3)
    target = torch.randn(2, 3, 4, 5)
    ours = torch.zeros(2, 3, 4, 5, requires_grad=True)
    theirs = torch.zeros(2, 3, 4, 5, requires_grad=True)
    from VoxelMorphRegLib.tensor.refinement import Adam

    mine, reference = Adam(ours, lr=0.05), torch.optim.Adam([theirs], lr=0.05)
    for _ in range(25):
        for parameter, optimiser in ((ours, mine), (theirs, reference)):
            optimiser.zero_grad()
            ((parameter - target) ** 4).sum().backward()
            optimiser.step()
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert (ours - target).abs().mean() < (target.abs().mean() * 0.9)  # it moved towards the target


def test_a_refined_register_imports_neither_monai_nor_dynamo():
    """``import monai`` (about 3.5 s) and ``torch._dynamo`` (1.6 s, pulled in by torch.optim) stay
    off the register path: the network, the refinement and the command line need neither."""
    import subprocess
    import sys

    script = (
        "import sys, torch\n"
        "from VoxelMorphRegLib.frontends import cli\n"
        "from VoxelMorphRegLib.pipelines import register\n"
        "from VoxelMorphRegLib.tensor.registration_network import RegistrationNetwork\n"
        "from VoxelMorphRegLib.tensor.refinement import refine_velocity\n"
        "net = RegistrationNetwork()\n"
        "m, f = torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32)\n"
        "v = net.unet(m, f)\n"
        "refine_velocity(m, f, v, lambda v: net.flow_from_velocity(v, (32, 32, 32)), 2, coarse_iterations=2)\n"
        "print(sorted(name for name in ('monai', 'torch._dynamo') if name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
