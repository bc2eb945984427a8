"""The training runner against a fake engine: command line, progress, log.csv, plot, stop, finish.

The fake engine takes the real ``train`` command line and behaves like the real one where the
runner cares: ``step N/M loss=... s/step eta N min [val_dice=...]`` lines on stderr, rows
appended to ``OUT/log.csv`` (same columns), ``best.pt`` at validations and at the end, and on
``KeyboardInterrupt`` (SIGINT) it writes ``last.pt`` and exits with 130. ``FAKE_TRAIN_MODE``:

* ``ok``: ``--steps`` steps, then ``last.pt`` and ``best.pt``, exit 0;
* ``slow``: starts a child process, then steps slowly (to be stopped);
* ``stubborn``: ignores SIGINT (so does its child): only a kill ends it;
* ``fail``: an engine error line, exit 2;
* ``nobest``: ends with 0 without writing ``best.pt``;
* ``leaky``: like ``ok``, but leaves a child process running when it ends.
"""

import csv
import json
import math
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import require_slicer_core

sitk = pytest.importorskip("SimpleITK")
slicer = require_slicer_core()

from VoxelMorphRegLib.errors import VoxelMorphRegError  # noqa: E402
from VoxelMorphRegLib.mrml import segmentations, volumes  # noqa: E402
from VoxelMorphRegLib.mrml import training_runner as tr  # noqa: E402
from VoxelMorphRegLib.mrml.engine_process import with_sigint_restored  # noqa: E402
from VoxelMorphRegLib.mrml.training_plot import TrainingPlot  # noqa: E402

FAKE_TRAIN_ENGINE = textwrap.dedent(
    r'''
    import argparse, csv, json, os, signal, subprocess, sys, time
    from pathlib import Path

    p = argparse.ArgumentParser()
    p.add_argument("command")
    p.add_argument("--data", required=True)
    p.add_argument("--val")
    p.add_argument("--atlas", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--similarity")
    p.add_argument("--smoothness-weight", type=float)
    p.add_argument("--dice-weight", type=float)
    p.add_argument("--validate-every", type=int, default=100)
    p.add_argument("--device")
    p.add_argument("--init")
    a = p.parse_args()
    mode = os.environ.get("FAKE_TRAIN_MODE", "ok")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"argv": sys.argv[1:], "cwd": os.getcwd(), "pid": os.getpid(), "child": None}

    def say(text):
        print(text, file=sys.stderr, flush=True)

    def save(name, step):
        (out / name).write_text(json.dumps({"step": step}))

    if mode == "stubborn":
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the child inherits it
    if mode in ("slow", "stubborn", "leaky"):
        # The child keeps the output pipe open (stdout), but its own KeyboardInterrupt traceback goes
        # nowhere: on the shared stderr it could interleave with the engine's "interrupted" line.
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], stderr=subprocess.DEVNULL)
        record["child"] = child.pid
    Path(os.environ["FAKE_TRAIN_RECORD"]).write_text(json.dumps(record))

    rows = list(csv.DictReader(open(a.data))) if a.data.endswith(".csv") else [{"name": "x"}, {"name": "y"}]
    vals = list(csv.DictReader(open(a.val))) if a.val else []
    say(f"{len(rows)} training and {len(vals)} validation subjects; preparing them on the model grid")
    for row in rows + vals:
        say(f"prepared {row.get('name')} in 0.1 s")
    if mode == "fail":
        say("voxelmorphreg: error: training needs at least two subjects")
        sys.exit(2)

    log = (out / "log.csv").open("a", newline="")
    writer = csv.writer(log)
    writer.writerow(["step", "loss", "similarity", "smoothness", "dice_loss", "learning_rate", "seconds_per_step", "validation_dice"])
    steps = a.steps if mode in ("ok", "nobest", "leaky") else 100000
    step, best = 0, -1.0
    try:
        for step in range(1, steps + 1):
            time.sleep(0.2 if mode in ("slow", "stubborn") else 0.002)
            loss = 1.0 / step
            val = ""
            if a.val and step % a.validate_every == 0:
                val = round(0.5 + step / (2 * steps), 4)
                if val > best:
                    best = val
                    save("best.pt", step)
            writer.writerow([step, f"{loss:.5f}", "0.1", "0.01", "0.0", "0.0003", "0.002", "" if val == "" else f"{val:.4f}"])
            if step % 10 == 0 or val != "" or step == steps or mode in ("slow", "stubborn"):
                log.flush()
                extra = f" val_dice={val:.4f} (best {best:.4f})" if val != "" else ""
                say(f"step {step}/{steps} loss={loss:.4f} sim=0.1000 smooth=0.0100 dice=0.0000 0.00 s/step eta {(steps - step) / 600:.0f} min{extra}")
    except KeyboardInterrupt:
        log.close()
        say(f"interrupted at step {step}; saving {out / 'last.pt'} so that the same command resumes")
        save("last.pt", step)
        sys.exit(130)
    log.close()
    save("last.pt", step)
    if mode != "nobest" and not (out / "best.pt").exists():
        save("best.pt", step)
    say(f"finished at step {step}; best validation Dice {best:.4f}; best model: {out}/best.pt")
    '''
)


def rotation(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def make_volume(scene, name, size, spacing, origin, angle, seed):
    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray((rng.random(size[::-1]) * 100).astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(rotation(angle).flatten())
    return volumes.sitk_to_volume(image, scene=scene, name=name)


def make_segmentation(scene, volume, name, names):
    """Segments ``names`` (values 1..N in that order) as boxes on the volume's grid."""
    size = volumes.volume_size(volume)
    labels = np.zeros(size[::-1], np.uint8)
    for index in range(len(names)):
        labels[1 + 3 * index: 3 + 3 * index, 2:8, 2:9] = index + 1
    infos = [segmentations.LabelInfo(i + 1, n, (1.0, 0.0, 0.0)) for i, n in enumerate(names)]
    node = segmentations.new_segmentation_from_labels(labels, volumes.ijk_to_ras(volume), infos, name=name)
    scene.AddNode(node)
    return node


@pytest.fixture()
def scene_data():
    scene = slicer.vtkMRMLScene()
    v = [make_volume(scene, f"subj{i}", (12, 10, 8 + i), (1.0, 1.2, 2.0), (-10.0 + i, 5.0, 3.0), 0.2 * i, i) for i in range(4)]
    segs = [make_segmentation(scene, v[1], "subj1_seg", ["Hippocampus", "Amygdala"]),
            make_segmentation(scene, v[2], "subj2 segmentation", ["amygdala", "Thalamus", "hippocampus"]),
            make_segmentation(scene, v[3], "subj3-label", ["Hippocampus", "Thalamus"])]
    return {"scene": scene, "volumes": v, "segmentations": segs}


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
    options = tr.TrainOptions(steps=300, learning_rate=1e-4, similarity="mse", smoothness_weight=0.5, dice_weight=2.0, validate_every=25, device="cpu", init="/m/v1.pt")
    prefix = ["python", "-m", "VoxelMorphRegLib.frontends.cli"]
    command = tr.build_train_command(prefix, "d/train.csv", "d/atlas.nii.gz", "out", options, validation="d/val.csv")
    assert command[:4] == prefix + ["train"]
    args = real_parser().parse_args(command[3:])
    assert (args.command, args.data, args.val, args.atlas, args.out) == ("train", "d/train.csv", "d/val.csv", "d/atlas.nii.gz", "out")
    assert (args.steps, args.learning_rate, args.similarity, args.smoothness_weight, args.dice_weight) == (300, 1e-4, "mse", 0.5, 2.0)
    assert (args.validate_every, args.device, args.init) == (25, "cpu", "/m/v1.pt")
    # Defaults of the panel are the engine's defaults.
    defaults = real_parser().parse_args(tr.build_train_command(["x"], "d", "a", "o", tr.TrainOptions())[1:])
    plain = real_parser().parse_args(["train", "--data", "d", "--atlas", "a", "--out", "o"])
    assert vars(defaults) == vars(plain)


def test_invalid_options_are_refused():
    for bad in (dict(steps=0), dict(learning_rate=0.0), dict(similarity="ncc"), dict(device="tpu"), dict(dice_weight=-1.0), dict(validate_every=0)):
        with pytest.raises(VoxelMorphRegError):
            tr.TrainOptions(**bad).check()


def test_step_lines_are_parsed():
    # The engine's format (pipelines/train.py), with and without validation.
    line = "step 120/2000 loss=-0.4123 sim=-0.4500 smooth=0.0300 dice=0.0100 1.25 s/step eta 39 min"
    p = tr.parse_step_line(line)
    assert (p.step, p.total, p.percent, p.loss, p.seconds_per_step, p.eta_minutes, p.validation_dice) == (120, 2000, 6, -0.4123, 1.25, 39.0, None)
    p = tr.parse_step_line("step 200/2000 loss=0.1 sim=0.1 smooth=0.0 dice=0.0 1.00 s/step eta 30 min val_dice=0.7312 (best 0.7400)")
    assert (p.validation_dice, p.best_dice) == (0.7312, 0.74)
    assert "validation Dice 0.731 (best 0.740)" in p.describe() and "about 30 min left" in p.describe()
    assert tr.parse_step_line("step 2000/2000 loss=0.1 sim=0.1 smooth=0.0 dice=0.0 1.00 s/step eta 0 min").percent == 100
    assert math.isnan(tr.parse_step_line("step 5/10 loss=nan sim=0 smooth=0 dice=0 1.00 s/step eta 0 min").loss)
    for other in ("prepared subj01 in 2.0 s", "resuming from out/last.pt at step 50", "steps 3/4", "[ 40%] stage"):
        assert tr.parse_step_line(other) is None


def test_log_reader_returns_only_complete_new_rows(tmp_path):
    path = tmp_path / "log.csv"
    reader = tr.TrainingLogReader(path)
    assert reader.read_new() == []  # not there yet
    path.write_text("step,loss,similarity,smoothness,dice_loss,learning_rate,seconds_per_step,validation_dice\n1,0.5,0.4,0.1,0,0.0003,1.2,\n2,0.4")
    rows = reader.read_new()
    assert [(r.step, r.loss) for r in rows] == [(1, 0.5)] and math.isnan(rows[0].validation_dice)
    assert rows[0].values["seconds_per_step"] == 1.2
    with path.open("a") as stream:
        stream.write("5,0.3,0.2,0,0.0003,1.1,0.61\n3,0.35,0.3,0.1,0,0.0003,1.1,\n")
    rows = reader.read_new()
    assert [(r.step, r.loss, r.validation_dice) for r in rows[:1]] == [(2, 0.45, 0.61)]
    assert [r.step for r in rows] == [2, 3]
    assert reader.read_new() == []


def test_sigint_restoring_command_runs_the_same_code():
    assert with_sigint_restored(["py", "-m", "pkg.mod", "train", "--x"])[:2] == ["py", "-c"]
    assert with_sigint_restored(["py", "-m", "pkg.mod", "train", "--x"])[3:] == ["train", "--x"]
    assert with_sigint_restored(["py", "/a/b.py", "train"])[3:] == ["train"]
    assert with_sigint_restored(["engine", "train"]) == ["engine", "train"]


# -- scene data ----------------------------------------------------------------------------------------


def test_segmentations_are_paired_with_their_volumes(scene_data):
    v, segs = scene_data["volumes"], scene_data["segmentations"]
    pairs = tr.pair_segmentations(v, [segs[2], segs[0], segs[1]])
    assert [(a.GetName(), b.GetName() if b else None) for a, b in pairs] == [("subj0", None), ("subj1", "subj1_seg"), ("subj2", "subj2 segmentation"), ("subj3", "subj3-label")]
    # The reference geometry volume wins over the name.
    renamed = make_segmentation(scene_data["scene"], v[0], "subj2_other", ["X"])
    renamed.SetReferenceImageGeometryParameterFromVolumeNode(v[0])
    assert tr.pair_segmentations(v, [renamed])[0][1] is renamed
    # A label map on exactly one volume's grid belongs to it; unknown names and doubles are refused.
    label_map = volumes.sitk_to_volume(volumes.volume_to_sitk(v[3]), scene=scene_data["scene"], name="labels of something", label=True)
    assert tr.pair_segmentations(v, [label_map])[3][1] is label_map
    stranger = make_segmentation(scene_data["scene"], v[0], "subject1 seg", ["X"])
    with pytest.raises(VoxelMorphRegError, match="subject1 seg: cannot tell"):
        tr.pair_segmentations(v, [stranger])
    with pytest.raises(VoxelMorphRegError, match="two segmentations"):
        tr.pair_segmentations(v, [segs[0], make_segmentation(scene_data["scene"], v[1], "subj1-label", ["X"])])
    # "subj1" must not take "subj10_seg".
    v10 = make_volume(scene_data["scene"], "subj10", (6, 6, 6), (1, 1, 1), (0, 0, 0), 0, 9)
    assert tr.pair_segmentations([v[1], v10], [make_segmentation(scene_data["scene"], v10, "subj10_seg", ["X"])])[1][1] is not None


def test_validation_holds_out_the_last_labelled_subjects(scene_data):
    pairs = tr.pair_segmentations(scene_data["volumes"], scene_data["segmentations"])
    train, val = tr.split_validation(pairs, 2)
    assert [a.GetName() for a, _ in train] == ["subj0", "subj1"] and [a.GetName() for a, _ in val] == ["subj2", "subj3"]
    assert tr.split_validation(pairs, 0) == (pairs, [])
    with pytest.raises(VoxelMorphRegError, match="at least 2"):
        tr.split_validation(pairs, 1)
    with pytest.raises(VoxelMorphRegError, match="only 3"):
        tr.split_validation(pairs, 4)


def test_scene_subjects_written_as_nifti_with_consistent_labels(scene_data, tmp_path):
    v = scene_data["volumes"]
    pairs = tr.pair_segmentations(v, scene_data["segmentations"])
    train, val = tr.split_validation(pairs, 2)
    data = tr.write_training_data(tmp_path / "data", train, val)
    rows = list(csv.DictReader(data.train_csv.open()))
    val_rows = list(csv.DictReader(data.validation_csv.open()))
    assert [r["name"] for r in rows] == ["subj0", "subj1"] and [r["name"] for r in val_rows] == ["subj2", "subj3"]
    assert rows[0]["labels"] == "" and all(r["labels"] for r in rows[1:] + val_rows)
    assert data.atlas == data.folder / rows[0]["image"]  # first training volume by default
    # Volumes: same voxels and geometry (LPS) as the nodes.
    for row, volume in zip(rows + val_rows, v):
        image = sitk.ReadImage(str(data.folder / row["image"]))
        expected = volumes.volume_to_sitk(volume)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(expected))
        np.testing.assert_allclose(image.GetDirection(), expected.GetDirection(), atol=1e-6)
        np.testing.assert_allclose(image.GetOrigin(), expected.GetOrigin(), atol=1e-4)
        if row["labels"]:
            labels = sitk.ReadImage(str(data.folder / row["labels"]))
            assert labels.GetSize() == image.GetSize()
            np.testing.assert_allclose(labels.GetOrigin(), image.GetOrigin(), atol=1e-4)
    # One value per structure name in every subject (case ignored): what Dice compares across subjects.
    legend = json.loads((data.folder / "labels.json").read_text())
    value = {name.lower(): int(k) for k, name in legend.items()}
    assert sorted(value) == ["amygdala", "hippocampus", "thalamus"] and len(set(value.values())) == 3

    def box_value(row, index):  # segment number ``index`` (0-based) of its subject sits in slices 1+3i..2+3i
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(data.folder / row["labels"])))
        found = set(np.unique(array[1 + 3 * index: 3 + 3 * index, 2:8, 2:9])) - {0}
        assert len(found) == 1
        return int(found.pop())

    assert box_value(rows[1], 0) == value["hippocampus"] and box_value(rows[1], 1) == value["amygdala"]
    assert [box_value(val_rows[0], i) for i in range(3)] == [value["amygdala"], value["thalamus"], value["hippocampus"]]
    assert [box_value(val_rows[1], i) for i in range(2)] == [value["hippocampus"], value["thalamus"]]
    # Writing again with unchanged volumes reuses the files; a changed volume gets a new file.
    again = tr.write_training_data(tmp_path / "data", train, val)
    assert list(csv.DictReader(again.train_csv.open())) == rows
    slicer.util.arrayFromVolume(v[0])[0, 0, 0] += 1.0
    v[0].GetImageData().Modified()
    changed = list(csv.DictReader(tr.write_training_data(tmp_path / "data", train, val).train_csv.open()))
    assert changed[0]["image"] != rows[0]["image"] and changed[1] == rows[1]


def test_label_maps_keep_their_values(scene_data, tmp_path):
    v = scene_data["volumes"]
    array = np.zeros(volumes.volume_size(v[0])[::-1], np.int16)
    array[2:4, 2:5, 2:6] = 17
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(volumes.volume_to_sitk(v[0]))
    label_map = volumes.sitk_to_volume(image, scene=scene_data["scene"], name="subj0_aseg", label=True)
    data = tr.write_training_data(tmp_path / "data", tr.pair_segmentations(v[:2], [label_map, scene_data["segmentations"][0]]))
    rows = list(csv.DictReader(data.train_csv.open()))
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(data.folder / rows[0]["labels"])))
    assert set(np.unique(written)) == {0, 17}
    second = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(data.folder / rows[1]["labels"]))))) - {0}
    assert 17 not in second and len(second) == 2  # segments get values the label map does not use


def test_first_image_follows_the_engine_order(tmp_path):
    folder = tmp_path / "subjects"
    folder.mkdir()
    for name in ("b_T1.nii.gz", "a_seg.nii.gz", "a_T1.nii.gz", "notes.txt", "c.nrrd"):
        (folder / name).write_bytes(b"")
    assert tr.first_image(folder) == folder / "a_T1.nii.gz"
    table = tmp_path / "list.csv"
    table.write_text("image,labels\n,only_labels.nii.gz\nimgs/x.nii.gz,\n")
    assert tr.first_image(table) == tmp_path / "imgs" / "x.nii.gz"
    try:
        from VoxelMorphRegLib.pipelines.train import sources_from  # imports torch
    except ImportError:
        return
    assert Path(next(s.image for s in sources_from(folder) if s.image)) == tr.first_image(folder)


# -- the runner with the fake engine ----------------------------------------------------------------------


def test_training_from_scene_reports_progress_fills_the_plot_and_returns_best(scene_data, fake):
    pairs = tr.pair_segmentations(scene_data["volumes"], scene_data["segmentations"])
    train, val = tr.split_validation(pairs, 2)
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


@pytest.mark.skipif(os.name == "nt", reason="process groups and SIGINT")
def test_stop_interrupts_the_engine_which_saves_last_and_leaves_no_process(scene_data, fake, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_MODE", "slow")
    finished = []
    runner = tr.TrainingRunner(fake["out"], tr.TrainOptions(steps=1000), subjects=tr.pair_segmentations(scene_data["volumes"][:2]),
                               engine_prefix=fake["prefix"], finished_callback=finished.append).start()
    poll_until(runner, lambda: runner.step >= 3 and fake["record"].exists())
    pids = json.loads(fake["record"].read_text())
    assert _alive(pids["pid"]) and _alive(pids["child"])
    started = time.monotonic()
    runner.stop()  # returns at once; poll() finishes the job
    assert time.monotonic() - started < 1 and runner.stopping
    poll_until(runner, lambda: runner.finished, timeout=15)
    assert runner.state == "stopped" and finished == [runner] and runner.returncode == 130
    assert runner.checkpoint == fake["out"] / "last.pt"  # no validation: no best.pt
    assert json.loads(runner.checkpoint.read_text())["step"] >= 3
    assert any(line.startswith("interrupted at step") for line in runner.log)
    time.sleep(0.2)
    assert not _alive(pids["pid"]) and not _alive(pids["child"])


@pytest.mark.skipif(os.name == "nt", reason="process groups and SIGINT")
def test_stop_kills_an_engine_that_ignores_the_interrupt(scene_data, fake, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_MODE", "stubborn")
    runner = tr.TrainingRunner(fake["out"], subjects=tr.pair_segmentations(scene_data["volumes"][:2]), engine_prefix=fake["prefix"], stop_timeout_s=1.0).start()
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


@pytest.mark.skipif(os.name == "nt", reason="process groups and SIGINT")
def test_stop_saves_last_even_when_sigint_is_ignored_here(scene_data, fake, monkeypatch):
    """A process started with SIGINT ignored (e.g. by a non-interactive shell's '&') passes that on;
    the engine is then started so that SIGINT still becomes KeyboardInterrupt."""
    monkeypatch.setenv("FAKE_TRAIN_MODE", "slow")
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        runner = tr.TrainingRunner(fake["out"], subjects=tr.pair_segmentations(scene_data["volumes"][:2]), engine_prefix=fake["prefix"], stop_timeout_s=10).start()
    finally:
        signal.signal(signal.SIGINT, previous)
    poll_until(runner, lambda: runner.step >= 2)
    runner.stop(wait=True)
    assert runner.returncode == 130 and runner.checkpoint == fake["out"] / "last.pt"


@pytest.mark.skipif(os.name == "nt", reason="process groups")
def test_a_finished_engine_leaves_no_process_behind(scene_data, fake, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_MODE", "leaky")
    runner = tr.TrainingRunner(fake["out"], tr.TrainOptions(steps=3), subjects=tr.pair_segmentations(scene_data["volumes"][:2]), engine_prefix=fake["prefix"])
    started = time.monotonic()
    assert runner.wait(timeout=60) == fake["out"] / "best.pt"
    assert time.monotonic() - started < 10  # the child holding the output pipe did not keep the run open
    time.sleep(0.2)
    assert not _alive(json.loads(fake["record"].read_text())["child"])


def test_engine_error_is_reported(scene_data, fake, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_MODE", "fail")
    runner = tr.TrainingRunner(fake["out"], subjects=tr.pair_segmentations(scene_data["volumes"][:2]), engine_prefix=fake["prefix"])
    with pytest.raises(VoxelMorphRegError) as info:
        runner.wait(timeout=60)
    assert str(info.value) == "training needs at least two subjects" and runner.state == "failed" and runner.checkpoint is None


def test_success_without_best_checkpoint_is_a_failure(scene_data, fake, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_MODE", "nobest")
    runner = tr.TrainingRunner(fake["out"], tr.TrainOptions(steps=3), subjects=tr.pair_segmentations(scene_data["volumes"][:2]), engine_prefix=fake["prefix"])
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


@pytest.mark.skipif(os.name == "nt", reason="SIGINT")
def test_real_engine_stopped_by_the_runner_saves_a_loadable_checkpoint(tmp_path):
    """The real ``voxelmorphreg train`` on four tiny labelled blobs (two for validation), on the CPU:
    its step lines and log.csv are understood, and Stop makes it save last.pt (and exit 130)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("monai") is None:
        pytest.skip("torch or monai not installed: the real engine cannot run")
    from conftest import blob_labels, blob_volume

    scene = slicer.vtkMRMLScene()
    pairs = []
    for i in range(4):
        image = blob_volume(size=(32, 30, 28), spacing=(1.5, 1.5, 1.5), origin=(i * 1.0, -i * 0.5, 0.0), seed=i)
        pairs.append((volumes.sitk_to_volume(image, scene=scene, name=f"s{i}"), volumes.sitk_to_volume(blob_labels(image), scene=scene, name=f"s{i}_seg", label=True)))
    plot = TrainingPlot(scene)
    out = tmp_path / "model"
    runner = tr.TrainingRunner(out, tr.TrainOptions(steps=1000, validate_every=2, device="cpu"), subjects=pairs[:2], validation_subjects=pairs[2:], rows_callback=plot.add_rows)
    runner.start()
    try:
        poll_until(runner, lambda: runner.step >= 2 or runner.finished, timeout=240)
    finally:
        runner.stop(wait=True)
    assert runner.state == "stopped", runner.error + "\n" + "\n".join(runner.log[-20:])
    assert runner.returncode == 130 and any(line.startswith("interrupted at step") for line in runner.log)
    assert (out / "last.pt").exists() and runner.checkpoint == out / "best.pt"  # validated at step 2
    assert plot.number_of_rows == len(runner.rows) >= 2 and plot.validation_table.GetTable().GetNumberOfRows() >= 1
    assert 0.0 <= runner.rows[1].validation_dice <= 1.0
    from VoxelMorphRegLib.checkpoint import load_checkpoint

    _, config, payload = load_checkpoint(out / "last.pt")
    assert payload["step"] == runner.step
