"""Signals sent to a real engine process at each stage: one line, exit 128 + signal, no temporary
file left, the earlier run's outputs untouched; after SIGKILL the next run cleans up.

Without frontends/signals.py SIGTERM ends the process with no message and leaves temporaries;
without the commit step (image/output_set.py) an interruption while writing mixes two runs.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import SimpleITK as sitk
from conftest import ROOT, blob_volume

from VoxelMorphRegLib.image.output_set import check_manifest

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")

# Writes made slow (as on a network disk), so that a signal lands while the outputs are written.
SLOW_WRITER = (
    "import sys, time; from VoxelMorphRegLib.image import output_set as o; real = o.sitk.WriteImage\n"
    "def slow(*args, **kwargs):\n    real(*args, **kwargs); time.sleep(1.5)\n"
    "o.sitk.WriteImage = slow\n"
    "from VoxelMorphRegLib.frontends.cli import main; sys.exit(main(sys.argv[1:]))\n"
)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("signal_pair")
    paths = []
    for name, seed in (("fixed", 0), ("moving", 1)):
        path = folder / f"{name}.nii.gz"
        sitk.WriteImage(blob_volume(size=(24, 24, 24), seed=seed), str(path))
        paths.append(str(path))
    return paths


def command(pair, out, refine, slow_writes=False):
    start = [sys.executable, "-c", SLOW_WRITER] if slow_writes else [sys.executable, "-m", "VoxelMorphRegLib.frontends.cli"]
    return start + ["register", *pair, "--out", str(out), "--model", "none", "--no-affine", "--no-qc", "--refine", str(refine)]


@pytest.fixture(scope="module")
def earlier(pair, tmp_path_factory):
    """A complete earlier run: the folder every interrupted run writes into (a copy of it)."""
    out = tmp_path_factory.mktemp("earlier") / "out"
    subprocess.run(command(pair, out, 2) + ["--quiet"], cwd=ROOT, check=True)
    return out


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def run_until(pair, out, refine, marker, number, slow_writes=False, delay=0.0):
    """Start the engine, send ``number`` once a stderr line contains ``marker``; (exit code, stderr lines)."""
    process = subprocess.Popen(command(pair, out, refine, slow_writes), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stderr:
        lines.append(line.rstrip("\n"))
        if marker in line:
            time.sleep(delay)
            process.send_signal(number)
            break
    lines += process.stderr.read().splitlines()
    return process.wait(timeout=60), lines


def test_sigterm_during_the_refinement(pair, earlier, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(earlier, out)
    before = snapshot(out)
    returned, lines = run_until(pair, out, 400, "refinement: 400 iterations", signal.SIGTERM, delay=0.3)
    assert returned == 143, lines
    assert lines[-1] == "voxelmorphreg: interrupted by SIGTERM" and not any("Traceback" in line for line in lines), lines
    assert snapshot(out) == before


def test_sighup_is_handled_like_sigterm(capsys, monkeypatch):
    from VoxelMorphRegLib.frontends import cli

    def hung_up(args, log, events):
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(5)  # the handler raises before this ends

    monkeypatch.setattr(cli, "_run_demo", hung_up)
    previous = signal.getsignal(signal.SIGHUP)
    assert cli.main(["demo", "--out", "unused", "--quiet"]) == 129
    assert capsys.readouterr().err.strip().splitlines() == ["voxelmorphreg: interrupted by SIGHUP"]
    assert signal.getsignal(signal.SIGHUP) == previous  # main() puts the handlers back


def test_ctrl_c_while_writing_keeps_the_earlier_set(pair, earlier, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(earlier, out)
    before = snapshot(out)
    returned, lines = run_until(pair, out, 3, "writing the results", signal.SIGINT, slow_writes=True, delay=0.5)
    assert returned == 130 and lines[-1] == "voxelmorphreg: interrupted", lines
    assert snapshot(out) == before  # no new file beside the old metrics.json, no temporary file
    assert check_manifest(out, "metrics.json") == []


def test_sigkill_while_writing_then_a_new_run_cleans_up(pair, earlier, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(earlier, out)
    before = {n: c for n, c in snapshot(out).items()}
    returned, _ = run_until(pair, out, 3, "writing the results", signal.SIGKILL, slow_writes=True, delay=0.5)
    assert returned == -signal.SIGKILL
    left = snapshot(out)
    assert {n: c for n, c in left.items() if not n.startswith(".")} == before  # final names untouched
    assert any(n.startswith(".voxelmorphreg-") for n in left), "the killed run should have left its temporaries"
    subprocess.run(command(pair, out, 2) + ["--quiet"], cwd=ROOT, check=True)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert check_manifest(out, "metrics.json") == []
    assert json.loads((out / "metrics.json").read_text())["refine_iterations"] == 2


def test_sigterm_during_training_saves_last_pt(tmp_path):
    from VoxelMorphRegLib.checkpoint import load_checkpoint

    data = tmp_path / "data"
    data.mkdir()
    for index in range(2):
        sitk.WriteImage(blob_volume(size=(40, 36, 32), seed=index), str(data / f"s{index}_norm.nii.gz"))
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "VoxelMorphRegLib.frontends.cli", "train", "--data", str(data), "--atlas", str(data / "s0_norm.nii.gz"),
                                "--out", str(out), "--steps", "5000", "--no-affine", "--device", "cpu"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stderr:
        lines.append(line.rstrip("\n"))
        if line.startswith("training on"):  # the loop starts: a few steps, then SIGTERM
            time.sleep(2.0)
            process.send_signal(signal.SIGTERM)
            break
    lines += process.stderr.read().splitlines()
    assert process.wait(timeout=60) == 143, lines
    assert lines[-1] == "voxelmorphreg: interrupted by SIGTERM" and any(line.startswith("interrupted at step") for line in lines), lines
    step = int(next(line for line in lines if line.startswith("interrupted at step")).split()[3].rstrip(";"))
    _, _, payload = load_checkpoint(out / "last.pt")
    assert payload["step"] == step
