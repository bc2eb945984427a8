"""The engine/front-end contract checked against the real engine: its parser, its events, its files."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk
from conftest import ROOT, blob_labels, blob_volume

from VoxelMorphRegLib import contract
from VoxelMorphRegLib.contract import RegisterJob, RegisterOptions, TrainJob, TrainOptions, command_line, options_from_args, parse_event
from VoxelMorphRegLib.frontends.cli import build_parser


def test_register_options_round_trip_through_the_real_parser():
    job = RegisterJob("f.nrrd", "m.nrrd", "out dir", "ml.nrrd", "fl.nrrd",
                      RegisterOptions(model="/m/model.pt", device="cuda", affine=False, refine_iterations=0, refine_smoothness=0.1 + 0.2,
                                      refine_learning_rate=0.05, integration_steps=9, qc=False))
    argv = command_line(job, events="-", quiet=True)
    args = build_parser().parse_args(argv)
    assert (args.command, args.fixed, args.moving, args.out, args.moving_labels, args.fixed_labels) == ("register", "f.nrrd", "m.nrrd", "out dir", "ml.nrrd", "fl.nrrd")
    assert options_from_args(RegisterOptions, args) == job.options  # 0.1 + 0.2 comes back bit for bit; refine 0 is not "unset"
    assert (args.events, args.quiet) == ("-", True)


def test_unset_register_options_stay_unset():
    argv = command_line(RegisterJob("f", "m", "o"))
    assert argv == ["register", "f", "m", "--out", "o", "--model", "bundled", "--device", "auto", "--brain-mask", "auto", "--contrast", "auto"]
    parsed = options_from_args(RegisterOptions, build_parser().parse_args(argv))
    assert parsed == RegisterOptions()
    assert (parsed.refine_iterations, parsed.refine_smoothness, parsed.refine_learning_rate, parsed.integration_steps) == (None, None, None, None)


def test_train_options_round_trip_through_the_real_parser():
    options = TrainOptions(val="val.csv", init="m.pt", pairs="to-atlas", atlas_labels="al.nii", steps=7, learning_rate=1e-4, similarity="mse",
                           lncc_window=5, smoothness="bending", smoothness_weight=0.5, dice_weight=0.0, augment_mm=3.0, spacing=3.0, svf_level=2,
                           validate_every=3, default_refine=10, default_refine_smoothness=0.3, default_refine_learning_rate=0.2,
                           skull_strip_labels=True, eval_labels="l.json", cache="c", workers=2, affine=False, device="cpu", seed=4)
    args = build_parser().parse_args(command_line(TrainJob("data", "atlas.nii", "out", options)))
    assert (args.command, args.data, args.atlas, args.out) == ("train", "data", "atlas.nii", "out")
    assert options_from_args(TrainOptions, args) == options
    assert options_from_args(TrainOptions, build_parser().parse_args(command_line(TrainJob("d", "a", "o")))) == TrainOptions()


def test_every_event_survives_its_line():
    events = [contract.Started("register", "1.0", pid=12), contract.Stage("refine", 55, "refinement"), contract.Progress("refine", 3, 10, 58, 0.25, "x"),
              contract.Step(5, 10, 0.5, 0.4, 0.1, math.nan, 1e-4, 0.3, 2.0), contract.Validation(5, 0.7, 0.75, False), contract.Resumed(4, "o/last.pt", 0.7),
              contract.Message("careful", "warning"), contract.Error("bad file", 2), contract.Interrupted("interrupted", 143, 5),
              contract.Done("o", ["warped.nii.gz"], 1.5, {"mean_after": 0.8})]
    for event in events:
        line = contract.encode_event(event)
        assert "\n" not in line and json.loads(line)["event"] == event.kind
        back = parse_event(line)
        if isinstance(event, contract.Step):
            assert back.dice_loss is None  # NaN is not JSON: it comes back as "unknown"
            back.dice_loss = math.nan
            assert contract.encode_event(back) == line
        else:
            assert back == event
    assert parse_event("[ 40%] network inference on CPU") is None
    assert parse_event('{"event": "no-such-kind"}') is None
    assert parse_event('{"event": "stage", "name": "x", "percent": 1, "text": "t", "added_later": 1}') == contract.Stage("x", 1, "t")


@pytest.fixture(scope="module")
def engine_run(tmp_path_factory):
    """A short real ``register`` in its own process, events on stdout, human lines on stderr."""
    folder = tmp_path_factory.mktemp("contract")
    fixed = blob_volume(size=(24, 20, 16), spacing=(2.0, 2.0, 2.0))
    paths = {name: str(folder / f"{name}.nii.gz") for name in ("fixed", "moving", "fixed_labels", "moving_labels")}
    sitk.WriteImage(fixed, paths["fixed"])
    sitk.WriteImage(blob_volume(size=(24, 20, 16), spacing=(2.0, 2.0, 2.0), seed=1), paths["moving"])
    sitk.WriteImage(blob_labels(fixed), paths["fixed_labels"])
    sitk.WriteImage(blob_labels(fixed), paths["moving_labels"])
    job = RegisterJob(paths["fixed"], paths["moving"], str(folder / "out"), paths["moving_labels"], paths["fixed_labels"],
                      RegisterOptions(model="none", affine=False, refine_iterations=2, qc=False))
    done = subprocess.run([sys.executable, "-m", "VoxelMorphRegLib.frontends.cli"] + command_line(job, events="-"),
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    return job, done


def test_a_real_register_run_reports_its_events(engine_run):
    job, done = engine_run
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    events = [parse_event(line) for line in lines]
    assert all(events), f"stdout holds only events: {lines}"
    assert isinstance(events[0], contract.Started) and events[0].command == "register"
    stages = [e.name for e in events if isinstance(e, contract.Stage)]
    assert stages == ["read", "model", "brain_mask", "model_grid", "refine", "integration", "field", "warp", "metrics", "write"]  # --no-affine, no network
    percents = [e.percent for e in events if isinstance(e, (contract.Stage, contract.Progress))]
    assert percents == sorted(percents) and 0 <= percents[0] and percents[-1] <= 100
    refine = [e for e in events if isinstance(e, contract.Progress)]
    assert [(e.stage, e.done, e.total) for e in refine] == [("refine", 1, 2), ("refine", 2, 2)] and all(math.isfinite(e.loss) for e in refine)
    last = events[-1]
    assert isinstance(last, contract.Done) and last.out == job.out
    out = Path(job.out)
    assert sorted(last.files) == sorted(p.name for p in out.iterdir())  # the files it names are exactly those in --out
    assert set(last.files) == {contract.WARPED, contract.WARPED_LABELS, contract.DISPLACEMENT, contract.INVERSE_DISPLACEMENT, contract.JACOBIAN, contract.METRICS}
    assert last.summary["mean_after"] == json.loads((out / contract.METRICS).read_text())["dice"]["mean_after"]
    # The human lines stay on stderr, one per stage event.
    human = [line for line in done.stderr.splitlines() if line.startswith("[")]
    assert len(human) == len(stages) + len(refine) + 1  # + "[100%] done"


def test_a_failed_run_reports_one_error_event(tmp_path):
    job = RegisterJob(str(tmp_path / "missing.nii.gz"), str(tmp_path / "missing.nii.gz"), str(tmp_path / "out"), options=RegisterOptions(model="none"))
    done = subprocess.run([sys.executable, "-m", "VoxelMorphRegLib.frontends.cli"] + command_line(job, events=str(tmp_path / "events.jsonl"), quiet=True),
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    events = [parse_event(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert isinstance(events[-1], contract.Error) and events[-1].exit_code == 2
    assert done.stderr.strip() == f"voxelmorphreg: error: {events[-1].message}"


def test_a_real_train_run_reports_its_events(tmp_path):
    """A few steps of the real ``train`` in its own process: steps, validations and checkpoints as events."""
    import csv

    for name, seed in (("a", 0), ("b", 1)):
        image = blob_volume(size=(40, 36, 32), seed=seed)
        sitk.WriteImage(image, str(tmp_path / f"{name}_norm.nii.gz"))
        sitk.WriteImage(blob_labels(image), str(tmp_path / f"{name}_seg.nii.gz"))
    with open(tmp_path / "subjects.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("image", "labels"), ("a_norm.nii.gz", "a_seg.nii.gz"), ("b_norm.nii.gz", "b_seg.nii.gz")])
    job = TrainJob(str(tmp_path / "subjects.csv"), str(tmp_path / "a_norm.nii.gz"), str(tmp_path / "run"),
                   TrainOptions(val=str(tmp_path / "subjects.csv"), steps=4, validate_every=2, affine=False, device="cpu"))
    done = subprocess.run([sys.executable, "-m", "VoxelMorphRegLib.frontends.cli"] + command_line(job, events="-"),
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    events = [parse_event(line) for line in done.stdout.splitlines()]
    assert all(events), done.stdout
    assert isinstance(events[0], contract.Started) and events[0].command == "train"
    assert [e.name for e in events if isinstance(e, contract.Stage)] == ["prepare", "train"]
    steps = [e for e in events if isinstance(e, contract.Step)]
    assert [e.step for e in steps] == [2, 4] and steps[-1].steps == 4 and all(math.isfinite(e.loss) for e in steps)
    validations = [e for e in events if isinstance(e, contract.Validation)]
    assert [e.step for e in validations] == [2, 4] and all(0.0 <= e.dice <= 1.0 for e in validations)
    last = events[-1]
    assert isinstance(last, contract.Done) and last.summary["step"] == 4
    assert set(last.files) == {contract.BEST_CHECKPOINT, contract.LAST_CHECKPOINT, contract.TRAINING_LOG}
    with open(Path(job.out) / contract.TRAINING_LOG) as handle:
        assert tuple(next(csv.reader(handle))) == contract.TRAINING_LOG_COLUMNS


def test_the_contract_and_model_resolution_import_without_torch():
    """The Slicer module reads them before torch is installed."""
    code = "import sys; import VoxelMorphRegLib.contract, VoxelMorphRegLib.model_resolution; print(sorted(m for m in ('torch', 'SimpleITK', 'qt') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="inherited descriptors are a POSIX channel")
def test_events_on_an_inherited_file_descriptor(tmp_path):
    import os

    read_end, write_end = os.pipe()
    job = RegisterJob(str(tmp_path / "missing.nii.gz"), str(tmp_path / "missing.nii.gz"), str(tmp_path / "out"), options=RegisterOptions(model="none"))
    process = subprocess.Popen([sys.executable, "-m", "VoxelMorphRegLib.frontends.cli"] + command_line(job, events=f"fd:{write_end}", quiet=True),
                               cwd=ROOT, pass_fds=(write_end,), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    os.close(write_end)
    with os.fdopen(read_end) as channel:
        events = [parse_event(line) for line in channel]
    out, err = process.communicate(timeout=60)
    assert process.returncode == 2 and out == ""
    assert [e.kind for e in events] == ["started", "stage", "error"]
    assert err.strip() == f"voxelmorphreg: error: {events[-1].message}"
