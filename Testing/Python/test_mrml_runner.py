"""The registration runner against a fake engine: progress, success, failure, cancel.

The fake engine is a small script taking the real command line (``register FIXED MOVING --out
DIR ...``). ``FAKE_ENGINE_MODE`` picks what it does:

* ``ok``: prints progress lines, writes every output the real engine writes;
* ``fail``: prints a progress line, then ``voxelmorphreg: error: ...`` and exits 2;
* ``sleep``: starts a child process, records both process ids, sleeps (to be cancelled);
* ``bad-grid``: succeeds but writes a warped image on the wrong grid;
* ``crash``: dies with a traceback and exit code 1.

``FAKE_ENGINE_BRAIN`` says what ``--brain-mask auto`` finds, as the real engine reports it in
metrics.json (``brain_mask``, ``brain_mask_mode``, ``folding_region``):

* ``stripped`` (default): two skull-stripped scans; the masks are not used, no mask file;
* ``whole-head``: the masks are used; ``brain_mask`` (an ellipsoid on the fixed grid) and
  ``moving_brain_mask`` (one on the moving grid) are written, ``.nii`` with ``--uncompressed``;
* ``bad-grid``: as ``whole-head``, but the fixed mask is written on the moving grid.

With ``--brain-mask off`` nothing is masked, whatever ``FAKE_ENGINE_BRAIN`` says.
``FAKE_ENGINE_KEEP``: a folder the engine copies its output folder to (the runner removes its own).
"""

import json
import os
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import require_slicer_core

sitk = pytest.importorskip("SimpleITK")
slicer = require_slicer_core()

from VoxelMorphRegLib.errors import CancelledError, VoxelMorphRegError  # noqa: E402
from VoxelMorphRegLib.mrml import runner as runner_module  # noqa: E402
from VoxelMorphRegLib.mrml import segmentations, tables, volumes  # noqa: E402
from VoxelMorphRegLib.mrml.outputs import OutputTargets  # noqa: E402
from VoxelMorphRegLib.contract import RegisterJob, RegisterOptions  # noqa: E402
from VoxelMorphRegLib.mrml.runner import RegistrationRunner  # noqa: E402

FAKE_ENGINE = textwrap.dedent(
    r'''
    import json, os, subprocess, sys, time
    from pathlib import Path
    import numpy as np
    import SimpleITK as sitk
    from VoxelMorphRegLib import contract  # the real events, through the contract's own emitter
    from VoxelMorphRegLib.frontends.cli import build_parser  # the real command line

    a = build_parser().parse_args(sys.argv[1:])
    channel = contract.open_event_channel(a.events)
    channel.emit(contract.Started("register", "fake", pid=os.getpid()))
    mode = os.environ.get("FAKE_ENGINE_MODE", "ok")
    record = os.environ.get("FAKE_ENGINE_RECORD")
    if record:
        Path(record).write_text(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "pid": os.getpid()}))

    def say(text, percent=None, name="stage"):
        print(text if percent is None else f"[{percent:3d}%] {text}", file=sys.stderr, flush=True)
        if percent is not None:
            channel.emit(contract.Stage(name, percent, text))

    say("reading the images", 0, "read")
    if mode == "fail":
        say("voxelmorphreg: error: model file /nowhere/model.pt: no such file")
        channel.emit(contract.Error("model file /nowhere/model.pt: no such file", 2))
        sys.exit(2)
    if mode == "crash":
        raise RuntimeError("unexpected engine bug")
    if mode == "sleep":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        Path(record).write_text(json.dumps({"pid": os.getpid(), "child": child.pid}))
        say("waiting", 10, "model")
        time.sleep(120)
        sys.exit(0)

    fixed = sitk.ReadImage(a.fixed)
    moving = sitk.ReadImage(a.moving)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    say("deformable registration", 40, "network")
    time.sleep(float(os.environ.get("FAKE_ENGINE_DELAY", "0")))  # a run long enough to be cancelled for sure
    size = fixed.GetSize()
    field = sitk.GetImageFromArray(np.full(size[::-1] + (3,), 0.5), isVector=True)
    field.CopyInformation(fixed)
    warped = sitk.Resample(moving, fixed, sitk.DisplacementFieldTransform(sitk.Image(field)), sitk.sitkLinear, 0.0)
    if mode == "bad-grid":
        warped = sitk.Resample(moving, moving)
    sitk.WriteImage(warped, str(out / "warped.nii.gz"))
    sitk.WriteImage(field, str(out / "displacement.nii.gz"))
    inverse = sitk.GetImageFromArray(np.full(moving.GetSize()[::-1] + (3,), -0.5), isVector=True)
    inverse.CopyInformation(moving)
    sitk.WriteImage(inverse, str(out / "inverse_displacement.nii.gz"))
    jacobian = sitk.GetImageFromArray(np.ones(size[::-1], np.float32))
    jacobian.CopyInformation(fixed)
    sitk.WriteImage(jacobian, str(out / "jacobian.nii.gz"))
    metrics = {"seconds": {"reading": 0.1, "network": 0.2, "total": 0.3}, "device": "cpu", "model": str(a.model), "folding_fraction": 0.0, "std_log_jacobian": 0.0}
    brain = os.environ.get("FAKE_ENGINE_BRAIN", "stripped") if a.brain_mask == "auto" else "off"
    metrics["brain_mask_mode"], metrics["folding_region"] = a.brain_mask, "whole fixed grid"
    if brain != "off":
        def ellipsoid(image):  # uint8, 1 inside: the middle of the grid
            k, j, i = np.meshgrid(*(np.linspace(-1, 1, n) for n in image.GetSize()[::-1]), indexing="ij")
            mask = sitk.GetImageFromArray((((i / 0.7) ** 2 + (j / 0.6) ** 2 + (k / 0.65) ** 2) < 1).astype(np.uint8))
            mask.CopyInformation(image)
            return mask
        masks = {"fixed": ellipsoid(moving if brain == "bad-grid" else fixed), "moving": ellipsoid(moving)}
        used = brain != "stripped"
        source = "network" if used else "stripped"
        volume = lambda m: float(sitk.GetArrayFromImage(m).sum() * np.prod(m.GetSpacing()) / 1000.0)
        metrics["brain_mask"] = {"mode": "auto", "used": used, "taper_mm": [6.0, 18.0],
                                 **{role: {"source": source, "volume_ml": round(volume(m), 1), "seconds": 0.1} for role, m in masks.items()}}
        if used:
            metrics["folding_region"] = "fixed brain mask"
            for name, mask in ((contract.BRAIN_MASK, masks["fixed"]), (contract.MOVING_BRAIN_MASK, masks["moving"])):
                sitk.WriteImage(mask, str(out / contract.output_name(name, compressed=not a.uncompressed)))
    if a.moving_labels:
        labels = sitk.ReadImage(a.moving_labels)
        warped_labels = sitk.Resample(labels, fixed, sitk.DisplacementFieldTransform(sitk.Image(field)), sitk.sitkNearestNeighbor, 0)
        sitk.WriteImage(warped_labels, str(out / "warped_labels.nii.gz"))
        if a.fixed_labels:
            f = sitk.GetArrayFromImage(sitk.ReadImage(a.fixed_labels))
            w = sitk.GetArrayFromImage(warped_labels)
            ids = sorted(set(np.unique(f)) & set(np.unique(w)) - {0})
            dice = lambda x, y, i: float(2 * ((x == i) & (y == i)).sum() / max(1, (x == i).sum() + (y == i).sum()))
            metrics["dice"] = {"labels": [int(i) for i in ids], "before": {str(i): 0.5 for i in ids}, "after": {str(i): dice(f, w, i) for i in ids},
                               "mean_before": 0.5, "mean_after": float(np.mean([dice(f, w, i) for i in ids])) if ids else 0.0}
    say("writing the results", 90, "write")
    (out / "metrics.json").write_text(json.dumps(metrics))
    if os.environ.get("FAKE_ENGINE_KEEP"):
        import shutil
        shutil.copytree(out, os.environ["FAKE_ENGINE_KEEP"], dirs_exist_ok=True)
    say("some free text the runner keeps in the log")
    channel.emit(contract.Done(str(out), sorted(p.name for p in out.iterdir()), 0.3, {}))
    '''
)


def rotation(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def make_image(size, spacing, origin, angle, seed):
    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray(rng.random(size[::-1]).astype(np.float32) * 100)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(rotation(angle).flatten())
    return image


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    scene = slicer.vtkMRMLScene()
    fixed = volumes.sitk_to_volume(make_image((24, 20, 16), (1.0, 1.2, 2.0), (-10.0, 5.0, 3.0), 0.3, 1), scene=scene, name="fixed")
    moving = volumes.sitk_to_volume(make_image((22, 26, 12), (1.1, 0.9, 2.5), (-12.0, 4.0, 1.0), -0.2, 2), scene=scene, name="moving")
    labels = np.zeros((12, 26, 22), np.uint8)
    labels[3:8, 5:15, 4:12] = 1
    labels[6:10, 16:22, 10:18] = 2
    moving_seg = segmentations.new_segmentation_from_labels(
        labels, volumes.ijk_to_ras(moving), [segmentations.LabelInfo(1, "Tumor", (1.0, 0.0, 0.0)), segmentations.LabelInfo(2, "Edema", (0.0, 1.0, 0.0))], name="moving seg"
    )
    scene.AddNode(moving_seg)
    moving_seg.CreateDefaultDisplayNodes()
    fixed_labels = np.zeros((16, 20, 24), np.uint8)
    fixed_labels[4:9, 4:12, 5:13] = 1  # "Edema" in the fixed segmentation: must be matched to moving value 2
    fixed_labels[9:12, 12:18, 12:20] = 2  # "Tumor"
    fixed_seg = segmentations.new_segmentation_from_labels(
        fixed_labels, volumes.ijk_to_ras(fixed), [segmentations.LabelInfo(1, "Edema", (0.0, 1.0, 0.0)), segmentations.LabelInfo(2, "tumor", (1.0, 0.0, 0.0))], name="fixed seg"
    )
    scene.AddNode(fixed_seg)
    fixed_seg.CreateDefaultDisplayNodes()

    engine = tmp_path / "fake_engine.py"
    engine.write_text(FAKE_ENGINE)
    record = tmp_path / "record.json"
    temp_root = tmp_path / "temp"
    temp_root.mkdir()
    monkeypatch.setenv("FAKE_ENGINE_RECORD", str(record))
    monkeypatch.setenv("FAKE_ENGINE_MODE", "ok")

    def make_runner(moving_segmentation=None, fixed_segmentation=None, options=None, targets=None, **kwargs):
        return RegistrationRunner(
            scene, fixed, moving, moving_segmentation, fixed_segmentation, options or RegisterOptions(qc=False), targets,
            engine_prefix=[sys.executable, str(engine)], temp_root=str(temp_root), **kwargs,
        )

    return {"scene": scene, "fixed": fixed, "moving": moving, "moving_seg": moving_seg, "fixed_seg": fixed_seg, "record": record, "temp_root": temp_root, "make_runner": make_runner}


def node_ids(scene):
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def new_node_classes(scene, before):
    return sorted(scene.GetNodeByID(i).GetClassName() for i in node_ids(scene) - before)


def test_command_line_matches_the_engine_parser():
    options = RegisterOptions(model="/m/model.pt", device="cuda", affine=False, refine_iterations=50, refine_smoothness=0.25, refine_learning_rate=0.05, integration_steps=9, qc=False)
    command = runner_module.build_command(["python", "-m", "VoxelMorphRegLib.frontends.cli"], RegisterJob("f.nrrd", "m.nrrd", "out", "ml.nrrd", "fl.nrrd", options))
    assert command[:6] == ["python", "-m", "VoxelMorphRegLib.frontends.cli", "register", "f.nrrd", "m.nrrd"]
    from VoxelMorphRegLib.frontends.cli import build_parser

    args = build_parser().parse_args(command[3:])
    assert (args.fixed, args.moving, args.out, args.moving_labels, args.fixed_labels) == ("f.nrrd", "m.nrrd", "out", "ml.nrrd", "fl.nrrd")
    assert (args.model, args.device, args.no_affine, args.refine, args.refine_smoothness, args.refine_learning_rate, args.integration_steps, args.no_qc) == ("/m/model.pt", "cuda", True, 50, 0.25, 0.05, 9, True)
    assert (args.events, args.stop_on_stdin) == ("-", True)  # events on stdout; stop when this process goes away
    defaults = build_parser().parse_args(runner_module.build_command(["x"], RegisterJob("f", "m", "o", options=runner_module.default_register_options()))[1:])
    assert (defaults.model, defaults.device, defaults.no_affine, defaults.refine, defaults.refine_smoothness, defaults.integration_steps) == ("bundled", "auto", False, None, None, None)  # None: the model's own refinement default
    network_only = build_parser().parse_args(runner_module.build_command(["x"], RegisterJob("f", "m", "o", options=RegisterOptions(refine_iterations=0)))[1:])
    assert network_only.refine == 0


def test_success_adds_exactly_the_expected_nodes(setup):
    scene = setup["scene"]
    before = node_ids(scene)
    progress, lines, finished = [], [], []
    runner = setup["make_runner"](
        setup["moving_seg"], setup["fixed_seg"], inverse_transform=True,
        progress_callback=lambda p, s: progress.append((p, s)), log_callback=lines.append, finished_callback=finished.append,
    )
    result = runner.wait(timeout=60)
    assert runner.state == "succeeded" and finished == [runner]
    assert (40, "deformable registration") in progress and progress[-1] == (100, "done")
    assert "some free text the runner keeps in the log" in lines
    assert new_node_classes(scene, before) == sorted(
        [
            "vtkMRMLScalarVolumeNode", "vtkMRMLScalarVolumeDisplayNode",  # warped
            "vtkMRMLScalarVolumeNode", "vtkMRMLScalarVolumeDisplayNode",  # Jacobian
            "vtkMRMLGridTransformNode", "vtkMRMLGridTransformNode",  # transform and inverse
            "vtkMRMLSegmentationNode", "vtkMRMLSegmentationDisplayNode",
            "vtkMRMLTableNode",
        ]
    )
    assert set(result.nodes()) == {"warped_volume", "transform", "inverse_transform", "segmentation", "jacobian", "table"}
    assert result.warped_volume.GetName() == "moving warped" and result["transform"] is result.transform
    # Outputs on the fixed grid carry the fixed volume's exact geometry.
    np.testing.assert_array_equal(volumes.ijk_to_ras(result.warped_volume), volumes.ijk_to_ras(setup["fixed"]))
    np.testing.assert_array_equal(volumes.ijk_to_ras(result.jacobian), volumes.ijk_to_ras(setup["fixed"]))
    assert result.transform.GetTransformFromParent().IsA("vtkOrientedGridTransform")
    p = np.array(result.transform.GetTransformFromParent().TransformPoint(0.0, 0.0, 0.0))
    np.testing.assert_allclose(p, [-0.5, -0.5, 0.5], atol=1e-6)  # u_LPS = (0.5, 0.5, 0.5) -> u_RAS
    # Segment names and colours kept; Dice rows named after the segments.
    segmentation = result.segmentation.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == ["Tumor", "Edema"]
    np.testing.assert_allclose(segmentation.GetNthSegment(1).GetColor(), (0.0, 1.0, 0.0))
    table = result.table.GetTable()
    dice_rows = [(table.GetValue(r, 1).ToString(), table.GetValue(r, 2).ToInt()) for r in range(table.GetNumberOfRows()) if table.GetValue(r, 0).ToString() == "Dice"]
    assert dice_rows == [("Tumor", 1), ("Edema", 2)]
    argv = json.loads(setup["record"].read_text())["argv"]
    assert "--fixed-labels" in argv and "--moving-labels" in argv and "--no-qc" in argv
    # Temporary folder gone.
    assert list(setup["temp_root"].iterdir()) == []


def test_fixed_labels_written_with_matched_values(setup):
    """The fixed label map given to the engine uses the moving segmentation's values, matched by name."""
    runner = setup["make_runner"](setup["moving_seg"], setup["fixed_seg"])
    runner.start()
    argv = runner.command
    written = sitk.GetArrayFromImage(sitk.ReadImage(argv[argv.index("--fixed-labels") + 1]))
    runner.wait(timeout=60)
    # fixed "Edema" (its value 1) became 2, fixed "tumor" (2) became 1, as in the moving segmentation.
    assert written[5, 6, 7] == 2 and written[10, 14, 15] == 1


def test_existing_output_nodes_are_reused(setup):
    scene = setup["scene"]
    target = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "my warped")
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "my table")
    before = node_ids(scene)
    result = setup["make_runner"](targets=OutputTargets(warped_volume=target, table=table), jacobian=False).wait(timeout=60)
    assert result.warped_volume is target and result.table is table
    assert target.GetImageData().GetDimensions() == setup["fixed"].GetImageData().GetDimensions()
    assert table.GetNumberOfRows() > 0
    # Only the transform is new, plus a display node for the target volume, which had none.
    assert new_node_classes(scene, before) == ["vtkMRMLGridTransformNode", "vtkMRMLScalarVolumeDisplayNode"]
    assert target.GetDisplayNode() is not None


def node_names(scene):
    return sorted(scene.GetNthNode(i).GetName() or "" for i in range(scene.GetNumberOfNodes()))


def _mask_file(folder, name):
    """The mask the engine wrote (``.nii`` with the module's --uncompressed hand-off) as an array ``[k, j, i]``."""
    from VoxelMorphRegLib.contract import output_name

    path = folder / output_name(name, compressed=False)
    assert path.exists(), sorted(p.name for p in folder.iterdir())
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def assert_brain_mask_node(node, name, volume, mask):
    """A brain mask node as the module promises it: a segmentation named ``name``, one segment "Brain", on
    ``volume``'s grid (labelmap and reference geometry), holding exactly ``mask``'s voxels, outline only."""
    import vtk

    from VoxelMorphRegLib.mrml.volumes import matrix_to_numpy

    assert node.GetClassName() == "vtkMRMLSegmentationNode" and node.GetName() == name
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1 and segmentation.GetNthSegment(0).GetName() == "Brain"
    labelmap = segmentation.GetNthSegment(0).GetRepresentation("Binary labelmap")
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    np.testing.assert_allclose(matrix_to_numpy(matrix), volumes.ijk_to_ras(volume), atol=1e-9)
    size = volumes.volume_size(volume)
    assert tuple(labelmap.GetExtent()) == (0, size[0] - 1, 0, size[1] - 1, 0, size[2] - 1)
    reference = slicer.vtkMRMLSegmentationNode()
    reference.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    parameter = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    assert segmentation.GetConversionParameter(parameter) == reference.GetSegmentation().GetConversionParameter(parameter)
    exported, _ = segmentations.segmentation_to_label_array(node, volume)
    assert exported.shape == mask.shape and int((exported > 0).sum()) == int((mask > 0).sum()) > 0
    np.testing.assert_array_equal(exported > 0, mask > 0)
    display = node.GetDisplayNode()
    assert display is not None and display.GetVisibility() and display.GetVisibility2DOutline() and not display.GetVisibility2DFill()


def test_brain_masks_become_outlined_segmentations(setup, monkeypatch, tmp_path):
    """A whole head with --brain-mask auto: the fixed mask (and with moving_brain_mask the moving one) as segmentation nodes."""
    monkeypatch.setenv("FAKE_ENGINE_BRAIN", "whole-head")
    monkeypatch.setenv("FAKE_ENGINE_KEEP", str(tmp_path / "kept"))
    scene = setup["scene"]
    before = node_ids(scene)
    result = setup["make_runner"](moving_brain_mask=True).wait(timeout=60)
    argv = json.loads(setup["record"].read_text())["argv"]
    assert argv[argv.index("--brain-mask") + 1] == "auto" and "--uncompressed" in argv
    kept = tmp_path / "kept"
    assert_brain_mask_node(result.brain_mask, "fixed brain mask", setup["fixed"], _mask_file(kept, "brain_mask.nii.gz"))
    assert_brain_mask_node(result.moving_brain_mask, "moving brain mask", setup["moving"], _mask_file(kept, "moving_brain_mask.nii.gz"))
    assert result.brain_mask.GetScene() is scene and result.moving_brain_mask.GetScene() is scene
    assert {"brain_mask", "moving_brain_mask"} <= set(result.nodes()) and result["brain_mask"] is result.brain_mask
    assert new_node_classes(scene, before).count("vtkMRMLSegmentationNode") == 2
    assert new_node_classes(scene, before).count("vtkMRMLSegmentationDisplayNode") == 2
    # The table says the masks were used, their volumes, and that folding was counted in the fixed brain.
    rows = {row[0]: row for row in tables.table_rows(result.table)}
    assert rows["Brain masks used"][1] == "auto" and rows["Brain masks used"][4] == 1.0
    fixed_ml = result.metrics["brain_mask"]["fixed"]["volume_ml"]
    assert rows["Brain mask volume: fixed (brain extraction network)"][4:] == (pytest.approx(fixed_ml), "mL") and fixed_ml > 0
    assert "Brain mask volume: moving (brain extraction network)" in rows
    assert rows["Folding fraction (det J <= 0)"][1] == "fixed brain mask"


def test_the_moving_mask_is_imported_only_when_asked(setup, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_BRAIN", "whole-head")
    result = setup["make_runner"]().wait(timeout=60)
    assert result.brain_mask is not None and result.moving_brain_mask is None and "moving_brain_mask" not in result.nodes()


def test_no_mask_node_when_the_engine_wrote_none(setup):
    """Two skull-stripped scans (the fake engine's default): the masks are not used, no file, no node."""
    scene = setup["scene"]
    before = node_ids(scene)
    result = setup["make_runner"](moving_brain_mask=True).wait(timeout=60)
    assert result.metrics["brain_mask"]["used"] is False
    assert result.brain_mask is None and result.moving_brain_mask is None
    assert not {"brain_mask", "moving_brain_mask"} & set(result.nodes())
    assert "vtkMRMLSegmentationNode" not in new_node_classes(scene, before)
    rows = {row[0]: row for row in tables.table_rows(result.table)}
    assert rows["Brain masks used"][4] == 0.0 and rows["Folding fraction (det J <= 0)"][1] == "whole fixed grid"
    assert "Brain mask volume: fixed (skull-stripped scan's foreground)" in rows


def test_brain_mask_off_is_sent_and_imports_no_mask(setup, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_BRAIN", "whole-head")  # what auto would find: off must not look
    scene = setup["scene"]
    before = node_ids(scene)
    result = setup["make_runner"](options=RegisterOptions(qc=False, brain_mask="off"), moving_brain_mask=True).wait(timeout=60)
    argv = json.loads(setup["record"].read_text())["argv"]
    assert argv[argv.index("--brain-mask") + 1] == "off"
    assert result.brain_mask is None and result.moving_brain_mask is None
    assert "vtkMRMLSegmentationNode" not in new_node_classes(scene, before)
    assert {row[0]: row for row in tables.table_rows(result.table)}["Brain masks used"][1:5:3] == ("off", 0.0)


def test_an_existing_mask_node_is_overwritten(setup, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_BRAIN", "whole-head")
    scene = setup["scene"]
    target = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my mask")
    target.GetSegmentation().AddEmptySegment("old", "Old")
    before = node_ids(scene)
    result = setup["make_runner"](targets=OutputTargets(brain_mask=target)).wait(timeout=60)
    assert result.brain_mask is target and target.GetName() == "my mask"
    assert target.GetSegmentation().GetNumberOfSegments() == 1 and target.GetSegmentation().GetNthSegment(0).GetName() == "Brain"
    display = target.GetDisplayNode()
    assert display.GetVisibility2DOutline() and not display.GetVisibility2DFill()
    assert "vtkMRMLSegmentationNode" not in new_node_classes(scene, before)  # no second mask node
    with pytest.raises(VoxelMorphRegError, match="my table: a vtkMRMLTableNode cannot hold a segmentation"):
        setup["make_runner"](targets=OutputTargets(brain_mask=scene.AddNewNodeByClass("vtkMRMLTableNode", "my table"))).start()


@pytest.mark.parametrize("failure", ["engine error", "mask on the wrong grid", "last node cannot be shown"])
def test_a_failing_run_with_brain_masks_leaves_the_scene_unchanged(setup, monkeypatch, failure):
    """Whatever fails -- the engine, reading a mask, or the very last step of the import -- no node is left behind
    (display nodes included) and an existing mask node chosen as output is untouched."""
    from VoxelMorphRegLib.mrml import outputs

    monkeypatch.setenv("FAKE_ENGINE_BRAIN", "bad-grid" if failure == "mask on the wrong grid" else "whole-head")
    if failure == "engine error":
        monkeypatch.setenv("FAKE_ENGINE_MODE", "fail")
    if failure == "last node cannot be shown":
        real = outputs._style_brain_mask

        def broken(key, node, plan):
            real(key, node, plan)
            if key == "moving_brain_mask":
                raise RuntimeError("no display for you")

        monkeypatch.setattr(outputs, "_style_brain_mask", broken)
    scene = setup["scene"]
    target = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my mask")
    target.GetSegmentation().AddEmptySegment("old", "Old")
    count, names = scene.GetNumberOfNodes(), node_names(scene)
    runner = setup["make_runner"](setup["moving_seg"], targets=OutputTargets(brain_mask=target), inverse_transform=True, moving_brain_mask=True)
    with pytest.raises(VoxelMorphRegError) as info:
        runner.wait(timeout=60)
    assert runner.state == "failed" and runner.result is None
    assert scene.GetNumberOfNodes() == count and node_names(scene) == names, str(info.value)
    assert target.GetSegmentation().GetNumberOfSegments() == 1 and target.GetSegmentation().GetNthSegment(0).GetName() == "Old"
    expected = {"engine error": "model file /nowhere/model.pt", "mask on the wrong grid": "is not the fixed volume's grid", "last node cannot be shown": "no display for you"}
    assert expected[failure] in str(info.value)
    assert list(setup["temp_root"].iterdir()) == []


def test_engine_error_leaves_scene_unchanged(setup, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_MODE", "fail")
    scene = setup["scene"]
    before = node_ids(scene)
    runner = setup["make_runner"](setup["moving_seg"], setup["fixed_seg"])
    with pytest.raises(VoxelMorphRegError) as info:
        runner.wait(timeout=60)
    assert str(info.value) == "model file /nowhere/model.pt: no such file"
    assert runner.state == "failed" and runner.error == str(info.value)
    assert node_ids(scene) == before
    assert list(setup["temp_root"].iterdir()) == []


def test_engine_crash_reports_last_line(setup, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_MODE", "crash")
    before = node_ids(setup["scene"])
    runner = setup["make_runner"]()
    with pytest.raises(VoxelMorphRegError, match="exit code 1: RuntimeError: unexpected engine bug"):
        runner.wait(timeout=60)
    assert node_ids(setup["scene"]) == before


def test_output_on_wrong_grid_fails_without_half_made_nodes(setup, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_MODE", "bad-grid")
    before = node_ids(setup["scene"])
    runner = setup["make_runner"](setup["moving_seg"])
    with pytest.raises(VoxelMorphRegError, match="warped.nii.gz"):
        runner.wait(timeout=60)
    assert node_ids(setup["scene"]) == before
    assert list(setup["temp_root"].iterdir()) == []


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed child of ours that is not reaped yet is a zombie: count it as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@pytest.mark.skipif(os.name == "nt", reason="process ids checked through /proc and signals")
def test_cancel_kills_the_tree_and_leaves_scene_unchanged(setup, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_MODE", "sleep")
    scene = setup["scene"]
    before = node_ids(scene)
    finished = []
    runner = setup["make_runner"](setup["moving_seg"], finished_callback=finished.append).start()
    deadline = time.monotonic() + 30
    while runner.progress < 10 and time.monotonic() < deadline:
        runner.poll()
        time.sleep(0.05)
    assert runner.progress == 10 and runner.stage == "waiting" and runner.running
    pids = json.loads(setup["record"].read_text())
    assert _alive(pids["pid"]) and _alive(pids["child"])
    folder = runner.temp_folder
    assert folder.exists()
    started = time.monotonic()
    runner.cancel()
    assert time.monotonic() - started < 5
    assert runner.state == "cancelled" and finished == [runner]
    time.sleep(0.2)
    assert not _alive(pids["pid"]) and not _alive(pids["child"])
    assert node_ids(scene) == before
    assert not folder.exists()
    with pytest.raises(CancelledError):
        runner.wait()


def test_a_linear_transform_node_is_refused_as_the_transform_output(setup):
    linear = setup["scene"].AddNewNodeByClass("vtkMRMLLinearTransformNode", "my linear")
    with pytest.raises(VoxelMorphRegError, match="my linear: a vtkMRMLLinearTransformNode cannot hold the displacement grid"):
        setup["make_runner"](targets=OutputTargets(transform=linear)).start()
    assert not setup["record"].exists()  # the engine never started


def test_invalid_inputs_are_refused_before_starting(setup):
    runner = RegistrationRunner(setup["scene"], None, setup["moving"])
    with pytest.raises(VoxelMorphRegError, match="no fixed volume"):
        runner.start()
    label = setup["scene"].AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    with pytest.raises(VoxelMorphRegError, match="scalar volume"):
        RegistrationRunner(setup["scene"], setup["fixed"], label).start()


def test_real_engine_result_agrees_with_slicer_resampling(tmp_path):
    """End to end with the real engine (no model, a few refinement steps, tiny oblique volumes):
    Slicer's own resampling of the moving volume through the imported transform node reproduces
    the engine's warped volume -- the displacement file's convention and the node's agree."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch not installed: the real engine cannot run")

    def blob(size, spacing, angle, origin, seed):
        rng = np.random.default_rng(seed)
        k, j, i = np.meshgrid(*(np.linspace(-1, 1, n) for n in size[::-1]), indexing="ij")
        body = ((i / 0.8) ** 2 + (j / 0.75) ** 2 + (k / 0.7) ** 2) < 1
        array = body * (0.4 + 0.5 * np.exp(-(((i - 0.3) / 0.2) ** 2 + ((j + 0.2) / 0.25) ** 2 + (k / 0.3) ** 2)))
        array = array + 0.01 * rng.standard_normal(array.shape) * body
        image = sitk.GetImageFromArray(array.astype(np.float32))
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        image.SetDirection(rotation(angle).flatten())
        return image

    scene = slicer.vtkMRMLScene()
    fixed = volumes.sitk_to_volume(blob((30, 28, 24), (1.2, 0.9, 1.5), 0.3, (10.0, -20.0, 5.0), 0), scene=scene, name="fixed")
    moving = volumes.sitk_to_volume(blob((28, 30, 26), (1.3, 1.0, 1.4), 0.2, (11.0, -19.0, 4.0), 1), scene=scene, name="moving")
    options = RegisterOptions(model="none", refine_iterations=5, device="cpu", affine=True, qc=False)
    progress = []
    runner = RegistrationRunner(scene, fixed, moving, options=options, temp_root=str(tmp_path), progress_callback=lambda p, text: progress.append((p, text)))
    try:
        result = runner.wait(timeout=240)
    except VoxelMorphRegError as exc:
        pytest.fail(f"real engine failed: {exc}\n" + "\n".join(runner.log[-20:]))
    # The real engine's events drive the progress: its stages in order, refinement progress, done.
    from VoxelMorphRegLib import contract

    kinds = [type(e).__name__ for e in runner.events]
    assert kinds[0] == "Started" and kinds[-1] == "Done" and runner.events[0].pid > 0
    stages = [e.name for e in runner.events if isinstance(e, contract.Stage)]
    assert stages[:4] == ["read", "model", "brain_mask", "affine"] and "refine" in stages and stages[-1] == "write"
    # --brain-mask auto (the default): a mask node exactly when the engine used the masks and wrote them.
    assert (result.brain_mask is not None) == bool(result.metrics["brain_mask"]["used"])
    refine = [e for e in runner.events if isinstance(e, contract.Progress) and e.stage == "refine"]
    assert refine and refine[-1].done == refine[-1].total == 5
    percents = [p for p, _ in progress]
    assert percents == sorted(percents) and percents[-1] == 100 and len(set(percents)) >= 8
    assert not any(line.lstrip().startswith("{") for line in runner.log)  # events are not shown as log lines
    moving.SetAndObserveTransformNodeID(result.transform.GetID())
    volumes_logic = slicer.vtkSlicerVolumesLogic()
    volumes_logic.SetMRMLScene(scene)
    resampled = slicer.util.arrayFromVolume(volumes_logic.ResampleVolumeToReferenceVolume(moving, fixed))
    engine = slicer.util.arrayFromVolume(result.warped_volume)
    inside = (engine != 0) & (resampled != 0)
    assert inside.mean() > 0.1  # the blob fills about a fifth of the grid
    # Measured: ~1e-5 relative when the conventions agree, ~0.5 with the field negated or left out.
    assert np.abs(resampled[inside] - engine[inside]).max() < 1e-3 * np.abs(engine).max()
