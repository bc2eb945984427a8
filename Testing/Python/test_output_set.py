"""The commit step of a run's outputs: complete, verified files of one run, or the earlier set untouched.

Each test stages a fault a user meets (a full disk, a writer that fails silently, a rename that
fails half-way, a run killed before or during its commit) and checks the folder afterwards: every
file under a final name is complete and listed, with its checksum, by the manifest beside it.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ROOT

from VoxelMorphRegLib.errors import VoxelMorphRegError
from VoxelMorphRegLib.image import output_set as module
from VoxelMorphRegLib.image.output_set import OutputSet, check_manifest

MANIFEST = "metrics.json"
NAMES = ("a.nii.gz", "b.nii.gz", "extra.nii.gz", "qc.png")


def noise(shape=(32, 32, 32), seed=0):
    """Incompressible voxels: the compressed file is as large as the data."""
    return sitk.GetImageFromArray(np.random.default_rng(seed).random(shape).astype(np.float32))


def commit(folder, images, tag, extra_bytes=None):
    with OutputSet(folder) as outputs:
        for name, image in images.items():
            outputs.add_image(name, image)
        if extra_bytes is not None:
            outputs.add_bytes("qc.png", extra_bytes)
        return outputs.commit({"tag": tag}, MANIFEST, replaces=NAMES)


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def assert_complete_set(folder, tag):
    assert check_manifest(folder, MANIFEST) == []
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["tag"] == tag
    visible = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert visible == sorted([*manifest["files"], MANIFEST])
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_a_committed_set_lists_every_file_with_its_checksum(tmp_path):
    manifest = commit(tmp_path, {"a.nii.gz": noise(), "b.nii.gz": noise(seed=1)}, "first", b"\x89PNG fake")
    assert sorted(manifest["files"]) == ["a.nii.gz", "b.nii.gz", "qc.png"]
    assert manifest["files"]["qc.png"]["bytes"] == len(b"\x89PNG fake")
    assert_complete_set(tmp_path, "first")
    back = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a.nii.gz")))
    assert np.array_equal(back, sitk.GetArrayFromImage(noise()))
    (tmp_path / "b.nii.gz").write_bytes((tmp_path / "a.nii.gz").read_bytes())  # a file from another run
    assert check_manifest(tmp_path, MANIFEST) == ["b.nii.gz: not the file its manifest names (size or checksum differs)"]


def test_a_writer_that_fails_silently_is_caught_and_the_earlier_set_kept(tmp_path, monkeypatch):
    commit(tmp_path, {"a.nii.gz": noise(), "b.nii.gz": noise(seed=1)}, "earlier")
    before = snapshot(tmp_path)
    real = sitk.WriteImage

    def short_write(image, path, *args, **kwargs):  # what ITK's NIfTI writer does on a full disk: no error
        real(image, path, *args, **kwargs)
        if "b.nii.gz" in str(path):
            with open(path, "r+b") as handle:
                handle.truncate(os.path.getsize(path) // 2)

    monkeypatch.setattr(module.sitk, "WriteImage", short_write)
    with pytest.raises(VoxelMorphRegError, match=r"b.nii.gz: could not be written completely \(is truncated"):
        commit(tmp_path, {"a.nii.gz": noise(seed=2), "b.nii.gz": noise(seed=3)}, "later")
    assert snapshot(tmp_path) == before
    assert_complete_set(tmp_path, "earlier")


def _small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("needs root to mount a 1 MB tmpfs")
    return mount


def test_a_full_disk_keeps_the_earlier_set(tmp_path):
    disk = _small_disk(tmp_path)
    try:
        commit(disk, {"a.nii.gz": noise((24, 24, 24))}, "earlier")  # 55 kB
        before = snapshot(disk)
        with pytest.raises(VoxelMorphRegError, match="could not be written completely.*MB free on that disk"):
            commit(disk, {"a.nii.gz": noise((24, 24, 24), seed=1), "b.nii.gz": noise((64, 64, 64), seed=2)}, "later")  # 1 MB more
        assert snapshot(disk) == before
        assert_complete_set(disk, "earlier")
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_failed_move_puts_the_earlier_files_back(tmp_path, monkeypatch):
    commit(tmp_path, {"a.nii.gz": noise(), "b.nii.gz": noise(seed=1)}, "earlier", b"png")
    before = snapshot(tmp_path)
    real, calls = os.replace, []

    def fail_on_the_sixth(source, target):
        calls.append(target)
        if len(calls) == 6:  # the earlier 4 files moved aside, one new file moved in
            raise PermissionError(13, "Permission denied")
        return real(source, target)

    monkeypatch.setattr(module.os, "replace", fail_on_the_sixth)
    with pytest.raises(VoxelMorphRegError, match="could not be moved into place.*earlier results were kept"):
        commit(tmp_path, {"a.nii.gz": noise(seed=2), "b.nii.gz": noise(seed=3)}, "later")
    assert snapshot(tmp_path) == before


def test_a_rerun_removes_the_earlier_outputs_it_does_not_write_but_nothing_else(tmp_path):
    commit(tmp_path, {"a.nii.gz": noise(), "extra.nii.gz": noise(seed=1)}, "earlier", b"png")
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / ".displacement-x1y2.tmp.nii.gz").write_text("not this run's naming")
    commit(tmp_path, {"a.nii.gz": noise(seed=2)}, "later")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".displacement-x1y2.tmp.nii.gz", "a.nii.gz", MANIFEST, "notes.txt"]
    assert check_manifest(tmp_path, MANIFEST) == []


def test_what_a_killed_run_left_is_cleaned_by_the_next_run_and_a_live_runs_files_are_not(tmp_path):
    commit(tmp_path, {"a.nii.gz": noise()}, "earlier")
    # a run killed while writing: its lock (nobody holds it) and a temporary file
    dead = "4242-0badc0de"
    (tmp_path / f".voxelmorphreg-{dead}.lock").write_text("pid 4242\n")
    (tmp_path / f".voxelmorphreg-{dead}-b.nii.gz").write_bytes(b"half a file")
    # a run that is still writing, in another process
    live = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from VoxelMorphRegLib.image.output_set import OutputSet;"
        f"o = OutputSet({str(tmp_path)!r}); o.add_bytes('x.png', b'x' * 10); o.wait(); print(o.run, flush=True); time.sleep(60)"
    )], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        run = live.stdout.readline().strip()
        assert run
        commit(tmp_path, {"a.nii.gz": noise(seed=1)}, "later")
        hidden = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
        assert hidden == [f".voxelmorphreg-{run}-x.png", f".voxelmorphreg-{run}.lock"]
    finally:
        live.kill()
        live.wait()
    commit(tmp_path, {"a.nii.gz": noise(seed=2)}, "last")  # the killed live run is now a dead one
    assert_complete_set(tmp_path, "last")


def test_a_run_killed_during_its_commit_gets_the_earlier_set_back(tmp_path):
    commit(tmp_path, {"a.nii.gz": noise(), "b.nii.gz": noise(seed=1)}, "earlier")
    before = snapshot(tmp_path)
    dead = "4243-0badc0de"
    # killed half-way through its commit: manifest and a.nii.gz moved aside, its new a.nii.gz in place
    for name in (MANIFEST, "a.nii.gz"):
        os.replace(tmp_path / name, tmp_path / f".voxelmorphreg-{dead}-earlier-{name}")
    (tmp_path / "a.nii.gz").write_bytes(b"the dead run's file")
    (tmp_path / f".voxelmorphreg-{dead}-b.nii.gz").write_bytes(b"not moved yet")
    (tmp_path / f".voxelmorphreg-{dead}.lock").write_text("")
    with OutputSet(tmp_path) as outputs:
        assert sorted(outputs.recovered) == sorted([f".voxelmorphreg-{dead}-earlier-{MANIFEST}", f".voxelmorphreg-{dead}-earlier-a.nii.gz", f".voxelmorphreg-{dead}-b.nii.gz"])
        assert {n: c for n, c in snapshot(tmp_path).items() if not n.startswith(".")} == before
    assert snapshot(tmp_path) == before


def test_an_interrupted_run_leaves_no_temporary_file(tmp_path):
    commit(tmp_path, {"a.nii.gz": noise()}, "earlier")
    before = snapshot(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with OutputSet(tmp_path) as outputs:
            outputs.add_image("a.nii.gz", noise((64, 64, 64), seed=1))
            outputs.add_image("b.nii.gz", noise((64, 64, 64), seed=2))
            raise KeyboardInterrupt
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------- through `register`


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory):
    from conftest import blob_volume

    folder = tmp_path_factory.mktemp("pair")
    paths = []
    for name, seed in (("fixed", 0), ("moving", 1)):
        paths.append(str(folder / f"{name}.nii.gz"))
        sitk.WriteImage(blob_volume(size=(24, 24, 24), seed=seed), paths[-1])
    return paths


def register(pair, out, refine, capsys):
    from VoxelMorphRegLib.frontends.cli import main

    code = main(["register", *pair, "--out", str(out), "--model", "none", "--no-affine", "--no-qc", "--refine", str(refine), "--quiet"])
    return code, capsys.readouterr().err.strip().splitlines()


def test_register_onto_a_nearly_full_disk_keeps_the_earlier_run(tmp_path, small_pair, capsys):
    disk = _small_disk(tmp_path)
    try:
        out = disk / "out"
        assert register(small_pair, out, 2, capsys)[0] == 0
        before = snapshot(out)
        room = sum(len(content) for content in before.values()) // 2  # half of what a run needs
        (disk / "filler").write_bytes(b"\0" * (shutil.disk_usage(disk).free - room))
        code, err = register(small_pair, out, 3, capsys)
        assert code == 2 and len(err) == 1 and err[0].startswith("voxelmorphreg: error: "), err
        assert "could not be written completely" in err[0] and "the earlier results were kept" in err[0], err
        assert snapshot(out) == before
        assert check_manifest(out, MANIFEST) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_register_with_a_writer_that_fails_silently_keeps_the_earlier_run(tmp_path, small_pair, capsys, monkeypatch):
    out = tmp_path / "out"
    assert register(small_pair, out, 2, capsys)[0] == 0
    before = snapshot(out)
    real = sitk.WriteImage

    def short_write(image, path, *args, **kwargs):
        real(image, path, *args, **kwargs)
        with open(path, "r+b") as handle:
            handle.truncate(os.path.getsize(path) - 100)

    monkeypatch.setattr(module.sitk, "WriteImage", short_write)
    code, err = register(small_pair, out, 3, capsys)
    assert code == 2 and len(err) == 1 and "could not be written completely (is truncated" in err[0], err
    assert snapshot(out) == before
    assert check_manifest(out, MANIFEST) == []


def test_a_checkpoint_onto_a_full_disk_is_a_one_line_error_and_keeps_the_earlier_one(tmp_path):
    from VoxelMorphRegLib.checkpoint import ModelConfig, load_checkpoint, save_checkpoint

    disk = _small_disk(tmp_path)
    try:
        small = ModelConfig(encoder_features=[4, 8, 8], decoder_features=[8])
        save_checkpoint(disk / "last.pt", small.build(), small, extra={"step": 1})
        large = ModelConfig(encoder_features=[64, 128, 128], decoder_features=[128])  # about 4 MB of weights
        with pytest.raises(VoxelMorphRegError, match="last.pt: cannot be written .*earlier file, if any, was kept"):
            save_checkpoint(disk / "last.pt", large.build(), large, extra={"step": 2})
        assert load_checkpoint(disk / "last.pt")[2]["step"] == 1
        assert [p.name for p in disk.iterdir()] == ["last.pt"]
    finally:
        subprocess.run(["umount", str(disk)], check=True)
