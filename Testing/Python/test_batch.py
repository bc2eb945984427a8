"""Batch registration (``voxelmorphreg batch``): many pairs in one process, the model loaded once,
a failing pair reported while the others go on, summary.csv, re-runs, Ctrl-C, batched network."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import ROOT, blob_labels, blob_volume

from VoxelMorphRegLib.checkpoint import ModelConfig, save_checkpoint
from VoxelMorphRegLib.contract import BATCH_SUMMARY_COLUMNS, PairDone, parse_event
from VoxelMorphRegLib.frontends.cli import main
from VoxelMorphRegLib.image.output_set import check_manifest
from VoxelMorphRegLib.pipelines import batch as batch_module
from VoxelMorphRegLib.pipelines import loaded_model

FAST = ["--model", "none", "--refine", "2", "--no-affine", "--no-qc", "--device", "cpu"]


def summary(out):
    with open(out / "summary.csv", newline="") as stream:
        reader = csv.DictReader(stream)
        assert tuple(reader.fieldnames) == BATCH_SUMMARY_COLUMNS
        return {row["name"]: row for row in reader}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batch_inputs")
    paths = {}
    for name, image in (("f", blob_volume(size=(24, 22, 20), seed=0)), ("m", blob_volume(size=(24, 22, 20), spacing=(1.05, 1.0, 0.95), seed=1)),
                        ("big", blob_volume(size=(72, 64, 60), seed=2))):
        paths[name] = folder / f"{name}.nii.gz"
        sitk.WriteImage(image, str(paths[name]))
        sitk.WriteImage(blob_labels(image), str(folder / f"{name}_labels.nii.gz"))
    (folder / "broken.nii.gz").write_bytes(paths["f"].read_bytes()[:300])  # a truncated file
    return folder


def write_csv(path, rows, header="fixed,moving,moving_labels,fixed_labels,name"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_a_broken_pair_fails_alone_and_the_summary_says_why(images, tmp_path, capsys, monkeypatch):
    pairs = write_csv(images / "three.csv", ["f.nii.gz,m.nii.gz,m_labels.nii.gz,f_labels.nii.gz,first", "f.nii.gz,broken.nii.gz,,,second", "m.nii.gz,f.nii.gz,,,third"])
    loads = []
    real_load = loaded_model.load_model
    monkeypatch.setattr(loaded_model, "load_model", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    out = tmp_path / "out"
    events = tmp_path / "events.jsonl"
    code = main(["batch", "--pairs", str(pairs), "--out", str(out), *FAST, "--quiet", "--events", str(events)])
    assert code == 1  # some pairs failed, the others are complete
    assert loads == [1]  # the model was loaded once for the three pairs
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"voxelmorphreg: error: 1 of 3 pairs failed (first: second: moving image {images / 'broken.nii.gz'}: is truncated: its compressed stream ends early); "
                   f"every pair's status is in {out / 'summary.csv'}"]
    rows = summary(out)
    assert [rows[n]["status"] for n in ("first", "second", "third")] == ["ok", "failed", "ok"]
    assert "broken.nii.gz: is truncated" in rows["second"]["error"] and rows["first"]["error"] == ""
    assert 0 < float(rows["first"]["mean_dice_before"]) <= float(rows["first"]["mean_dice_after"]) <= 1
    assert rows["third"]["mean_dice_before"] == "" and float(rows["third"]["folding_fraction"]) >= 0
    for name in ("first", "third"):
        assert check_manifest(out / name, "metrics.json") == []
        inputs = json.loads((out / name / "metrics.json").read_text())["inputs"]
        assert inputs["fixed"] == str(images / ("f.nii.gz" if name == "first" else "m.nii.gz"))  # relative to the CSV
    assert (out / "first" / "warped_labels.nii.gz").is_file() and not (out / "third" / "warped_labels.nii.gz").exists()
    assert not (out / "second").exists()
    done = [e for e in map(parse_event, events.read_text().splitlines()) if isinstance(e, PairDone)]
    assert [(e.name, e.status) for e in done] == [("first", "ok"), ("second", "failed"), ("third", "ok")]

    # Re-running skips the complete pairs (same inputs, same settings) and retries the failed one.
    before = (out / "first" / "metrics.json").read_bytes()
    assert main(["batch", "--pairs", str(pairs), "--out", str(out), *FAST, "--quiet"]) == 1
    assert [summary(out)[n]["status"] for n in ("first", "second", "third")] == ["skipped", "failed", "skipped"]
    assert (out / "first" / "metrics.json").read_bytes() == before
    assert summary(out)["first"]["mean_dice_after"] == rows["first"]["mean_dice_after"]
    # A complete-looking pair whose file was damaged since is registered again.
    damaged = out / "third" / "warped.nii.gz"
    damaged.write_bytes(damaged.read_bytes()[:-10])
    assert main(["batch", "--pairs", str(pairs), "--out", str(out), *FAST, "--quiet"]) == 1
    assert [summary(out)[n]["status"] for n in ("first", "second", "third")] == ["skipped", "failed", "ok"]
    assert check_manifest(out / "third", "metrics.json") == []
    # Other settings: registered again.
    assert main(["batch", "--pairs", str(pairs), "--out", str(out), *FAST[:3], "3", *FAST[4:], "--quiet"]) == 1
    assert [summary(out)[n]["status"] for n in ("first", "second", "third")] == ["ok", "failed", "ok"]


@pytest.mark.parametrize("rows,header,message", [
    (["f.nii.gz,m.nii.gz,x"], "fixed,moving,moving_label", "unknown column(s) 'moving_label'"),
    (["f.nii.gz,m.nii.gz,,,a", "m.nii.gz,f.nii.gz,,,a"], None, "line 3: pair name 'a' repeats line 2"),
    (["f.nii.gz,m.nii.gz,,,../up"], None, "'../up' cannot be a folder name"),
    ([], None, "no pairs"),
])
def test_a_csv_that_cannot_be_used_is_refused_in_one_line(images, tmp_path, capsys, rows, header, message):
    pairs = write_csv(tmp_path / "pairs.csv", rows, header or "fixed,moving,moving_labels,fixed_labels,name")
    assert main(["batch", "--pairs", str(pairs), "--out", str(tmp_path / "out"), *FAST, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("voxelmorphreg: error: --pairs") and message in err[0], err


def _run_until_first_done(images, tmp_path, sig):
    """Start a batch of three pairs in a real engine process; send ``sig`` once the first pair's
    folder is complete (its manifest checks) and the second pair has begun."""
    pairs = write_csv(images / "slow.csv", ["f.nii.gz,m.nii.gz,,,quick", "big.nii.gz,f.nii.gz,,,slow", "m.nii.gz,f.nii.gz,,,never"])
    out = tmp_path / "out"
    command = [sys.executable, "-m", "VoxelMorphRegLib.frontends.cli", "batch", "--pairs", str(pairs), "--out", str(out),
               "--model", "none", "--refine", "40", "--no-affine", "--no-qc", "--device", "cpu", "--quiet", "--events", str(tmp_path / "events.jsonl")]
    # The second pair's fixed image is 4x larger per side: its refinement takes many times the first pair's.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            started = (tmp_path / "events.jsonl").read_text() if (tmp_path / "events.jsonl").exists() else ""
            if '"event":"pair_started","name":"slow"' in started:
                assert check_manifest(out / "quick", "metrics.json") == [] and summary(out)["quick"]["status"] == "ok"
                break
            time.sleep(0.02)
        assert process.poll() is None, "the batch ended before the signal: " + process.stderr.read()
        process.send_signal(sig)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, err, out


def test_ctrl_c_after_the_first_pair(images, tmp_path):
    code, err, out = _run_until_first_done(images, tmp_path, signal.SIGINT)
    assert code == 130 and err.strip().splitlines()[-1] == "voxelmorphreg: interrupted"
    rows = summary(out)
    assert [rows[n]["status"] for n in ("quick", "slow", "never")] == ["ok", "interrupted", "pending"]
    assert check_manifest(out / "quick", "metrics.json") == []
    assert not (out / "slow").exists() or os.listdir(out / "slow") == []  # nothing of the interrupted pair, not even a temporary
    assert not (out / "never").exists()


def test_sigterm_after_the_first_pair(images, tmp_path):
    code, err, out = _run_until_first_done(images, tmp_path, signal.SIGTERM)
    assert code == 143 and err.strip().splitlines()[-1] == "voxelmorphreg: interrupted by SIGTERM"
    assert [summary(out)[n]["status"] for n in ("quick", "slow", "never")] == ["ok", "interrupted", "pending"]
    assert check_manifest(out / "quick", "metrics.json") == []


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    config = ModelConfig(encoder_features=[4, 8, 8], decoder_features=[8], svf_level=1)
    network = config.build()
    torch.nn.init.normal_(network.unet.head.weight, std=0.05)  # a velocity far from zero, so that a mix-up between pairs shows
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(path, network, config)
    return path


def test_pairs_of_one_grid_share_a_forward_pass_with_the_same_result(images, tiny_model, tmp_path, capsys):
    """--batch-size 2 on the CPU: the first two pairs (same model grid) go through the network
    together, the third (another grid) alone; every output equals the one-at-a-time run's."""
    pairs = write_csv(images / "batched.csv", ["f.nii.gz,m.nii.gz,,,one", "f.nii.gz,big.nii.gz,,,two", "big.nii.gz,m.nii.gz,,,three"])
    common = ["--model", str(tiny_model), "--refine", "0", "--no-affine", "--no-qc", "--device", "cpu"]
    assert main(["batch", "--pairs", str(pairs), "--out", str(tmp_path / "batched"), *common, "--batch-size", "2"]) == 0
    log = capsys.readouterr().err
    assert log.count("network on 2 pairs in one batch") == 1 and log.count("network inference on CPU") == 1  # the third pair alone
    assert main(["batch", "--pairs", str(pairs), "--out", str(tmp_path / "single"), *common, "--batch-size", "1", "--quiet"]) == 0
    for name in ("one", "two", "three"):
        batched = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "batched" / name / "displacement.nii.gz")))
        single = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "single" / name / "displacement.nii.gz")))
        assert np.abs(single).max() > 0.01  # the network moves things
        np.testing.assert_allclose(batched, single, atol=2e-3)  # the same up to the 1/1024 mm rounding
    rows = summary(tmp_path / "batched")
    assert all(rows[n]["status"] == "ok" for n in ("one", "two", "three"))


@pytest.mark.parametrize("symmetric", [False, True])
def test_batched_velocities_are_each_pairs_own(tiny_model, symmetric):
    """Pairs run together get the velocity each gets alone; a symmetric model's batch of 2N (each
    pair both ways) is split back the same way."""
    from VoxelMorphRegLib.contract import RegisterOptions
    from VoxelMorphRegLib.pipelines.register import prepare_pair

    model = loaded_model.load_model(RegisterOptions(model=str(tiny_model), device="cpu", refine_iterations=0))
    model.module().symmetric = symmetric
    options = RegisterOptions(affine=False)
    prepared = [prepare_pair(blob_volume(size=(24, 22, 20), seed=s), blob_volume(size=(24, 22, 20), seed=s + 10), options, model, log=lambda _: None) for s in range(2)]
    together = batch_module.batched_velocities(model, prepared)
    for p, velocity in zip(prepared, together):
        with torch.inference_mode():
            alone = model.module().velocity(p.moving_t, p.fixed_t)
        torch.testing.assert_close(velocity, alone, rtol=1e-4, atol=1e-6)
        if symmetric:
            with torch.inference_mode():
                swapped = model.module().velocity(p.fixed_t, p.moving_t)
            torch.testing.assert_close(velocity, -swapped, rtol=1e-4, atol=1e-6)
    assert not torch.equal(together[0], together[1])
