"""The training runner against a fake engine and the real one: command line, events, log.csv, plot, stop, finish.

The fake engine takes the real ``train`` command line and behaves like the real one where the
runner cares: ``step N/M loss=... s/step eta N min [val_dice=...]`` lines on stderr, rows
appended to ``OUT/log.csv`` (same columns), ``best.pt`` at validations and at the end; it parses
its arguments with the real parser and, like the real one with ``--stop-on-stdin``, ends its loop
when its standard input says ``stop`` (then ``last.pt``, ``best.pt`` if none, exit 0).
``FAKE_TRAIN_MODE``:

* ``ok``: ``--steps`` steps, then ``last.pt`` and ``best.pt``, exit 0;
* ``slow``: starts a child process, then steps slowly (to be stopped);
* ``stubborn``: ignores the stop request: only a kill ends it;
* ``fail``: an engine error line, exit 2;
* ``nobest``: ends with 0 without writing ``best.pt``;
* ``leaky``: like ``ok``, but leaves a child process running when it ends.
"""

import json
import math
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import require_slicer_core

sitk = pytest.importorskip("SimpleITK")
slicer = require_slicer_core()

from VoxelMorphRegLib.errors import VoxelMorphRegError  # noqa: E402
from VoxelMorphRegLib.mrml import volumes  # noqa: E402
from VoxelMorphRegLib.mrml import training_export as te  # noqa: E402
from VoxelMorphRegLib.mrml import training_runner as tr  # noqa: E402
from VoxelMorphRegLib.mrml.training_plot import TrainingPlot  # noqa: E402

FAKE_TRAIN_ENGINE = textwrap.dedent(
    r'''
    import csv, json, os, subprocess, sys, threading, time
    from pathlib import Path
    from VoxelMorphRegLib import contract  # the real events, through the contract's own emitter
    from VoxelMorphRegLib.frontends.cli import build_parser  # the real command line

    a = build_parser().parse_args(sys.argv[1:])
    channel = contract.open_event_channel(a.events)
    channel.emit(contract.Started("train", "fake", pid=os.getpid()))
    stop = threading.Event()

    def watch_stdin():  # what --stop-on-stdin does in the real engine
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        stop.set()

    if a.stop_on_stdin:
        threading.Thread(target=watch_stdin, daemon=True).start()
    mode = os.environ.get("FAKE_TRAIN_MODE", "ok")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"argv": sys.argv[1:], "cwd": os.getcwd(), "pid": os.getpid(), "child": None}

    def say(text):
        print(text, file=sys.stderr, flush=True)

    def save(name, step):
        (out / name).write_text(json.dumps({"step": step}))

    if mode in ("slow", "stubborn", "leaky"):
        # The child keeps the output pipe open (stdout).
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        record["child"] = child.pid
    Path(os.environ["FAKE_TRAIN_RECORD"]).write_text(json.dumps(record))

    rows = list(csv.DictReader(open(a.data))) if a.data.endswith(".csv") else [{"name": "x"}, {"name": "y"}]
    vals = list(csv.DictReader(open(a.val))) if a.val else []
    say(f"{len(rows)} training and {len(vals)} validation subjects; preparing them on the model grid")
    channel.emit(contract.Stage("prepare", 0, "preparing"))
    for index, row in enumerate(rows + vals):
        say(f"prepared {row.get('name')} in 0.1 s")
        channel.emit(contract.Progress("prepare", index + 1, len(rows + vals), None, None, f"prepared {row.get('name')}"))
    if mode == "fail":
        say("voxelmorphreg: error: training needs at least two subjects")
        channel.emit(contract.Error("training needs at least two subjects", 2))
        sys.exit(2)
    channel.emit(contract.Stage("train", 0, "training"))

    log = (out / "log.csv").open("a", newline="")
    writer = csv.writer(log)
    writer.writerow(["step", "loss", "similarity", "smoothness", "dice_loss", "learning_rate", "seconds_per_step", "validation_dice"])
    steps = a.steps if mode in ("ok", "nobest", "leaky") else 100000
    step, best = 0, -1.0
    for step in range(1, steps + 1):
        if stop.is_set() and mode != "stubborn":  # the real loop: should_stop() before each step
            say("stop requested")
            step -= 1
            break
        time.sleep(0.2 if mode in ("slow", "stubborn") else 0.002)
        loss = 1.0 / step
        val = ""
        if a.val and step % a.validate_every == 0:
            val = round(0.5 + step / (2 * steps), 4)
            if val > best:
                best = val
                save("best.pt", step)
            channel.emit(contract.Validation(step, val, best, improved=best == val))
        writer.writerow([step, f"{loss:.5f}", "0.1", "0.01", "0.0", "0.0003", "0.002", "" if val == "" else f"{val:.4f}"])
        if step % 10 == 0 or val != "" or step == steps or mode in ("slow", "stubborn"):
            log.flush()
            extra = f" val_dice={val:.4f} (best {best:.4f})" if val != "" else ""
            say(f"step {step}/{steps} loss={loss:.4f} sim=0.1000 smooth=0.0100 dice=0.0000 0.00 s/step eta {(steps - step) / 600:.0f} min{extra}")
            channel.emit(contract.Step(step, steps, loss, 0.1, 0.01, 0.0, 0.0003, 0.002, (steps - step) * 0.1))
    log.close()
    save("last.pt", step)
    if mode != "nobest" and not (out / "best.pt").exists():
        save("best.pt", step)
    say(f"finished at step {step}; best validation Dice {best:.4f}; best model: {out}/best.pt")
    channel.emit(contract.Done(str(out), ["best.pt", "last.pt", "log.csv"], None, {"step": step}))
    '''
)


from mrml_scene_data import scene_data  # noqa: E402,F401


@pytest.fixture()
def fake(tmp_path, monkeypatch):
    engine = tmp_path / "fake_train.py"
    engine.write_text(FAKE_TRAIN_ENGINE)
    record = tmp_path / "record.json"
    monkeypatch.setenv("FAKE_TRAIN_RECORD", str(record))
    monkeypatch.setenv("FAKE_TRAIN_MODE", "ok")
    prefix = [sys.executable, str(engine)]
    return {"prefix": prefix, "record": record, "out": tmp_path / "model", "folder": tmp_path}


def real_parser():
    try:
        from VoxelMorphRegLib.frontends.cli import build_parser
    except ImportError:
        pytest.skip("engine command line not importable")
    return build_parser()


def _alive(pid):
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not reaped yet) counts as gone
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def poll_until(runner, condition, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out; log:\n" + "\n".join(runner.log[-20:])
        runner.poll()
        time.sleep(0.02)


# -- command line and parsing -------------------------------------------------------------------------


def test_command_line_is_accepted_by_the_real_parser():
    from VoxelMorphRegLib.contract import TrainJob

    options = tr.TrainOptions(steps=300, learning_rate=1e-4, similarity="mse", smoothness_weight=0.5, dice_weight=2.0, validate_every=25, device="cpu", init="/m/v1.pt", val="d/val.csv")
    prefix = ["python", "-m", "VoxelMorphRegLib.frontends.cli"]
    command = tr.build_train_command(prefix, TrainJob("d/train.csv", "d/atlas.nii.gz", "out", options))
    assert command[:4] == prefix + ["train"]
    args = real_parser().parse_args(command[3:])
    assert (args.command, args.data, args.val, args.atlas, args.out) == ("train", "d/train.csv", "d/val.csv", "d/atlas.nii.gz", "out")
    assert (args.steps, args.learning_rate, args.similarity, args.smoothness_weight, args.dice_weight) == (300, 1e-4, "mse", 0.5, 2.0)
    assert (args.validate_every, args.device, args.init, args.events, args.stop_on_stdin) == (25, "cpu", "/m/v1.pt", "-", True)
    # Defaults of the panel are the engine's defaults.
    defaults = real_parser().parse_args(tr.build_train_command(["x"], TrainJob("d", "a", "o"))[1:])
    plain = real_parser().parse_args(["train", "--data", "d", "--atlas", "a", "--out", "o", "--events", "-", "--stop-on-stdin"])
    assert vars(defaults) == vars(plain)


def test_invalid_options_are_refused():
    for bad in (dict(steps=0), dict(learning_rate=0.0), dict(similarity="ncc"), dict(device="tpu"), dict(dice_weight=-1.0), dict(validate_every=0)):
        with pytest.raises(VoxelMorphRegError):
            tr.check_train_options(tr.TrainOptions(**bad))


def test_progress_text_from_step_and_validation_events():
    from VoxelMorphRegLib import contract

    runner = tr.TrainingRunner("out", tr.TrainOptions(steps=2000))
    seen = []
    runner.progress_callback = lambda percent, text: seen.append((percent, text))
    for event in (contract.Step(120, 2000, -0.4123, None, None, None, None, 1.25, 39 * 60.0), contract.Validation(200, 0.7312, 0.74, improved=False)):
        runner._handle_line(contract.encode_event(event))  # as the engine writes it
    assert (runner.step, runner.last_progress.percent, runner.last_progress.loss, runner.last_progress.seconds_per_step) == (120, 6, -0.4123, 1.25)
    assert seen[0] == (6, "step 120/2000, loss -0.4123, about 39 min left")
    assert "validation Dice 0.731 (best 0.740)" in seen[1][1]
    runner._handle_line("step 5/10 loss=nan: a human line")  # kept in the log, not parsed
    assert runner.log == ["step 5/10 loss=nan: a human line"] and runner.step == 120


# -- the runner with the fake engine ----------------------------------------------------------------------


def test_training_from_scene_reports_progress_fills_the_plot_and_returns_best(scene_data, fake):
    pairs = te.pair_segmentations(scene_data["volumes"], scene_data["segmentations"])
    train, val = te.split_validation(pairs, 2)
    plot = TrainingPlot(scene_data["scene"])
    progress, finished = [], []
    runner = tr.TrainingRunner(
        fake["out"], tr.TrainOptions(steps=40, validate_every=10, device="cpu"), subjects=train, validation_subjects=val,
        engine_prefix=fake["prefix"], progress_callback=lambda p, s: progress.append((p, s)), rows_callback=plot.add_rows, finished_callback=finished.append,
    )
    started = time.monotonic()
    checkpoint = runner.wait(timeout=60)
    assert time.monotonic() - started < 30
    assert runner.state == "succeeded" and finished == [runner] and runner.returncode == 0
    assert checkpoint == fake["out"] / "best.pt" and checkpoint.exists()
    # The command the engine got is the real parser's, with the written CSVs and atlas.
    recorded = json.loads(fake["record"].read_text())
    args = real_parser().parse_args(recorded["argv"])
    assert (args.data, args.val, args.out, args.steps, args.validate_every, args.device) == (str(runner.training_data.train_csv), str(runner.training_data.validation_csv), str(fake["out"]), 40, 10, "cpu")
    assert Path(args.atlas) == runner.training_data.atlas and recorded["cwd"] == str(fake["out"])
    # Progress: preparation, then steps, then done.
    stages = [s for _, s in progress]
    assert "prepared 4/4 subjects" in stages
    assert (25, "step 10/40, loss 0.1000, validation Dice 0.625 (best 0.625), less than a minute left") in progress
    assert progress[-1][0] == 100 and runner.step == 40
    # Every log.csv row is in the table; the validated ones in the validation table.
    assert [r.step for r in runner.rows] == list(range(1, 41))
    table, validation = plot.table.GetTable(), plot.validation_table.GetTable()
    assert table.GetNumberOfRows() == 40 and validation.GetNumberOfRows() == 4
    assert [table.GetValue(r, 0).ToDouble() for r in (0, 39)] == [1.0, 40.0]
    assert table.GetValue(1, 1).ToDouble() == pytest.approx(0.5)
    assert math.isnan(table.GetValue(0, 2).ToDouble()) and table.GetValue(9, 2).ToDouble() == pytest.approx(0.625)
    assert [validation.GetValue(r, 0).ToDouble() for r in range(4)] == [10.0, 20.0, 30.0, 40.0]
    assert [validation.GetValue(r, 1).ToDouble() for r in range(4)] == pytest.approx([0.625, 0.75, 0.875, 1.0])


def test_training_from_a_folder_uses_its_first_image_as_atlas(fake, tmp_path):
    folder = tmp_path / "subjects"
    folder.mkdir()
    for name in ("s1_T1.nii.gz", "s1_seg.nii.gz", "s2_T1.nii.gz"):
        (folder / name).write_bytes(b"")
    runner = tr.TrainingRunner(fake["out"], tr.TrainOptions(steps=5), data=folder, engine_prefix=fake["prefix"])
    assert runner.wait(timeout=60) == fake["out"] / "best.pt"
    args = real_parser().parse_args(json.loads(fake["record"].read_text())["argv"])
    assert (args.data, args.atlas, args.val) == (str(folder), str(folder / "s1_T1.nii.gz"), None)
    assert len(runner.rows) == 5
    with pytest.raises(VoxelMorphRegError, match="folder or a .csv"):
        tr.TrainingRunner(tmp_path / "o2", data=tmp_path / "nothing", engine_prefix=fake["prefix"]).start()


@pytest.mark.skipif(os.name == "nt", reason="process groups")
def test_stop_asks_the_engine_which_saves_last_and_leaves_no_process(scene_data, fake, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_MODE", "slow")
    finished = []
    runner = tr.TrainingRunner(fake["out"], tr.TrainOptions(steps=1000), subjects=te.pair_segmentations(scene_data["volumes"][:2]),
                               engine_prefix=fake["prefix"], finished_callback=finished.append).start()
    poll_until(runner, lambda: runner.step >= 3 and fake["record"].exists())
    pids = json.loads(fake["record"].read_text())
    assert _alive(pids["pid"]) and _alive(pids["child"])
    started = time.monotonic()
    runner.stop()  # returns at once; poll() finishes the job
    assert time.monotonic() - started < 1 and runner.stopping
    poll_until(runner, lambda: runner.finished, timeout=15)
    assert runner.state == "stopped" and finished == [runner] and runner.returncode == 0
    assert "stop requested" in runner.log and not any("killed" in line for line in runner.log)
    # No validation: the engine writes the last model as best.pt too; both hold the step it stopped at.
    assert runner.checkpoint == fake["out"] / "best.pt"
    assert json.loads((fake["out"] / "last.pt").read_text())["step"] >= 3
    time.sleep(0.2)
    assert not _alive(pids["pid"]) and not _alive(pids["child"])


@pytest.mark.skipif(os.name == "nt", reason="process groups")
def test_stop_kills_an_engine_that_ignores_the_request(scene_data, fake, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_MODE", "stubborn")
    runner = tr.TrainingRunner(fake["out"], subjects=te.pair_segmentations(scene_data["volumes"][:2]), engine_prefix=fake["prefix"], stop_timeout_s=1.0).start()
    poll_until(runner, lambda: runner.step >= 1 and fake["record"].exists())
    pids = json.loads(fake["record"].read_text())
    started = time.monotonic()
    runner.stop()
    poll_until(runner, lambda: runner.finished, timeout=15)
    assert 0.9 < time.monotonic() - started < 5
    assert runner.state == "stopped" and runner.returncode == -signal.SIGKILL and runner.checkpoint is None
    assert any("did not stop within 1 s; killed" in line for line in runner.log)
    time.sleep(0.2)
    assert not _alive(pids["pid"]) and not _alive(pids["child"])


@pytest.mark.skipif(os.name == "nt", reason="process groups")
def test_stop_before_the_first_step_kills_at_once(scene_data, fake, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_MODE", "stubborn")
    runner = tr.TrainingRunner(fake["out"], subjects=te.pair_segmentations(scene_data["volumes"][:2]), engine_prefix=fake["prefix"], stop_timeout_s=30).start()
    runner.stop()  # still preparing: nothing to save, no reason to wait
    poll_until(runner, lambda: runner.finished, timeout=10)
    assert runner.state == "stopped" and runner.returncode == -signal.SIGKILL and runner.checkpoint is None


@pytest.mark.skipif(os.name == "nt", reason="process groups")
def test_a_finished_engine_leaves_no_process_behind(scene_data, fake, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_MODE", "leaky")
    runner = tr.TrainingRunner(fake["out"], tr.TrainOptions(steps=3), subjects=te.pair_segmentations(scene_data["volumes"][:2]), engine_prefix=fake["prefix"])
    started = time.monotonic()
    assert runner.wait(timeout=60) == fake["out"] / "best.pt"
    assert time.monotonic() - started < 10  # the child holding the output pipe did not keep the run open
    time.sleep(0.2)
    assert not _alive(json.loads(fake["record"].read_text())["child"])


def test_engine_error_is_reported(scene_data, fake, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_MODE", "fail")
    runner = tr.TrainingRunner(fake["out"], subjects=te.pair_segmentations(scene_data["volumes"][:2]), engine_prefix=fake["prefix"])
    with pytest.raises(VoxelMorphRegError) as info:
        runner.wait(timeout=60)
    assert str(info.value) == "training needs at least two subjects" and runner.state == "failed" and runner.checkpoint is None


def test_success_without_best_checkpoint_is_a_failure(scene_data, fake, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_MODE", "nobest")
    runner = tr.TrainingRunner(fake["out"], tr.TrainOptions(steps=3), subjects=te.pair_segmentations(scene_data["volumes"][:2]), engine_prefix=fake["prefix"])
    with pytest.raises(VoxelMorphRegError, match="without writing .*best.pt"):
        runner.wait(timeout=60)


def test_invalid_inputs_are_refused_before_starting(scene_data, fake):
    v = scene_data["volumes"]
    with pytest.raises(VoxelMorphRegError, match="at least two"):
        tr.TrainingRunner(fake["out"], subjects=[(v[0], None)], engine_prefix=fake["prefix"]).start()
    with pytest.raises(VoxelMorphRegError, match="need a segmentation"):
        tr.TrainingRunner(fake["out"], subjects=[(v[0], None), (v[1], None)], validation_subjects=[(v[2], None), (v[3], None)], engine_prefix=fake["prefix"]).start()
    label = scene_data["scene"].AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    with pytest.raises(VoxelMorphRegError, match="scalar volume"):
        tr.TrainingRunner(fake["out"], subjects=[(v[0], None), (label, None)], engine_prefix=fake["prefix"]).start()
    with pytest.raises(VoxelMorphRegError, match="no training data"):
        tr.TrainingRunner(fake["out"], engine_prefix=fake["prefix"]).start()
    assert not fake["record"].exists()  # the engine never started


# A stand-in for Slicer's PythonSlicer launcher (CTKAppLauncher): it runs the real interpreter as a
# child that shares its standard input, output and process group, waits for it, and -- having no
# SIGINT handler -- dies at once on SIGINT, leaving the engine behind.
STAND_IN_LAUNCHER = textwrap.dedent(
    r"""
    import os, signal, subprocess, sys
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    child = subprocess.Popen(sys.argv[1:])
    with open(os.environ["LAUNCHER_RECORD"], "w") as record:
        record.write(str(child.pid))
    sys.exit(child.wait())
    """
)


def _real_engine_runner(tmp_path, monkeypatch):
    """A training runner for the real ``voxelmorphreg train`` behind the stand-in launcher: four tiny labelled blobs, two for validation, CPU."""
    import importlib.util

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("monai") is None:
        pytest.skip("torch or monai not installed: the real engine cannot run")
    from conftest import blob_labels, blob_volume

    scene = slicer.vtkMRMLScene()
    pairs = []
    for i in range(4):
        image = blob_volume(size=(32, 30, 28), spacing=(1.5, 1.5, 1.5), origin=(i * 1.0, -i * 0.5, 0.0), seed=i)
        pairs.append((volumes.sitk_to_volume(image, scene=scene, name=f"s{i}"), volumes.sitk_to_volume(blob_labels(image), scene=scene, name=f"s{i}_seg", label=True)))
    launcher = tmp_path / "launcher.py"
    launcher.write_text(STAND_IN_LAUNCHER)
    monkeypatch.setenv("LAUNCHER_RECORD", str(tmp_path / "engine.pid"))
    prefix = [sys.executable, str(launcher)] + tr.default_engine_prefix(sys.executable)
    plot = TrainingPlot(scene)
    runner = tr.TrainingRunner(tmp_path / "model", tr.TrainOptions(steps=1000, validate_every=2, device="cpu"), subjects=pairs[:2], validation_subjects=pairs[2:],
                               engine_prefix=prefix, rows_callback=plot.add_rows)
    return runner, plot, tmp_path / "engine.pid"


def _check_stopped_run(runner, plot):
    from VoxelMorphRegLib.checkpoint import load_checkpoint

    out = runner.out
    assert runner.state == "stopped", runner.error + "\n" + "\n".join(runner.log[-20:])
    assert not any("killed" in line for line in runner.log), "\n".join(runner.log[-20:])
    assert (out / "last.pt").exists() and runner.checkpoint == out / "best.pt"  # validated at step 2
    assert plot.number_of_rows == len(runner.rows) >= 2 and plot.validation_table.GetTable().GetNumberOfRows() >= 1
    assert 0.0 <= runner.rows[1].validation_dice <= 1.0
    _, config, payload = load_checkpoint(out / "last.pt")  # complete, not cut off by a kill
    assert payload["step"] == runner.rows[-1].step


def _kill_launcher_and_check_the_engine_goes_on(runner, pid_file):
    os.kill(runner.process.pid, signal.SIGINT)  # the launcher only
    engine_pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while runner.process.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runner.process.process.returncode == -signal.SIGINT
    for _ in range(10):
        assert not runner.poll() and _alive(engine_pid)  # the engine is still training
        time.sleep(0.05)
    return engine_pid


@pytest.mark.skipif(os.name == "nt", reason="process groups")
@pytest.mark.parametrize("waitid", [True, False], ids=["waitid", "no-waitid"])
def test_engine_behind_a_launcher_that_died_is_waited_for(scene_data, fake, monkeypatch, tmp_path, waitid):
    """The fake engine behind the stand-in launcher, with and without ``os.waitid`` (macOS has none)."""
    if not waitid:
        monkeypatch.delattr(os, "waitid", raising=False)
    monkeypatch.setenv("FAKE_TRAIN_MODE", "slow")
    launcher = tmp_path / "launcher.py"
    launcher.write_text(STAND_IN_LAUNCHER)
    monkeypatch.setenv("LAUNCHER_RECORD", str(tmp_path / "engine.pid"))
    runner = tr.TrainingRunner(fake["out"], subjects=te.pair_segmentations(scene_data["volumes"][:2]), engine_prefix=[sys.executable, str(launcher)] + fake["prefix"]).start()
    poll_until(runner, lambda: runner.step >= 2)
    engine_pid = _kill_launcher_and_check_the_engine_goes_on(runner, tmp_path / "engine.pid")
    runner.stop()
    poll_until(runner, lambda: runner.finished, timeout=15)
    assert runner.state == "stopped" and "stop requested" in runner.log and runner.process.waited_for_orphans
    assert json.loads((fake["out"] / "last.pt").read_text())["step"] >= 2
    time.sleep(0.2)
    assert not _alive(engine_pid)


@pytest.mark.skipif(os.name == "nt", reason="process groups")
def test_real_engine_behind_a_launcher_that_died_is_waited_for_and_stops_cleanly(tmp_path, monkeypatch):
    """The launcher dies on SIGINT (as PythonSlicer does); the real engine goes on. The runner waits for
    the engine, not the launcher, and Stop still reaches it (standard input): it saves a loadable last.pt."""
    runner, plot, pid_file = _real_engine_runner(tmp_path, monkeypatch)
    runner.start()
    try:
        poll_until(runner, lambda: runner.step >= 2 or runner.finished, timeout=240)
        engine_pid = _kill_launcher_and_check_the_engine_goes_on(runner, pid_file)
    finally:
        runner.stop(wait=True)
    _check_stopped_run(runner, plot)
    assert runner.process.waited_for_orphans and runner.process.engine_pid == engine_pid  # from the real engine's "started" event
    # The real engine's training events drive the progress line (no text is parsed).
    from VoxelMorphRegLib import contract

    steps = [e for e in runner.events if isinstance(e, contract.Step)]
    validations = [e for e in runner.events if isinstance(e, contract.Validation)]
    assert steps and steps[0].steps == 1000 and validations and 0.0 <= validations[0].dice <= 1.0
    assert runner.last_progress is not None and runner.last_progress.validation_dice is not None
    time.sleep(0.2)
    assert not _alive(engine_pid)
