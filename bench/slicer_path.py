"""The Slicer path, end to end: scene nodes -> engine -> result nodes, with the MRML of ``slicer-core``.

What ``VoxelMorphRegLogic().register(...)`` does inside Slicer, without Qt: the registration runner
(:class:`VoxelMorphRegLib.mrml.runner.RegistrationRunner`) on a plain ``vtkMRMLScene``. Each run is
cut into the parts a user waits for:

* ``export``: the input nodes written to the temporary folder (``_write_inputs``);
* ``engine_start``: from starting the engine process to its first stage line (interpreter start,
  imports, argument parsing);
* ``engine``: from that line to the engine's ``done`` event (the engine's own work: reading,
  registering, writing the hand-off files);
* ``engine_exit``: from ``done`` to the process's end as the runner sees it;
* ``import``: the outputs read and turned into nodes in the scene (``stage_outputs`` +
  ``commit_outputs``), and the temporary folder removed;
* ``total``: from ``runner.start()`` to the result nodes in the scene; ``overhead`` = ``total`` minus
  the engine's own ``seconds.total`` from its metrics.json.

Run from the repository root::

    python bench/slicer_path.py                          # aseg subj01 <- subj02, bundled model, --refine 0
    python bench/slicer_path.py --refine 200 --repeats 3 --labels
    python bench/slicer_path.py --legacy                 # also the earlier hand-off (.nii.gz, every output) for comparison
    python bench/slicer_path.py --synthetic --model none --refine 5    # no data needed: a check of the script

Timings are only worth anything on a quiet machine: the script prints the load average and marks
the figures ``NOT QUIET`` when it is above 1.5 per core-pair (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "aseg"
PARTS = ("export", "engine_start", "engine", "engine_exit", "import", "total", "engine_seconds_total", "overhead")
QUIET_LOAD = 1.5


def _scene_inputs(args, scene):
    """Fixed and moving volume nodes (and label map nodes with --labels) in ``scene``."""
    import SimpleITK as sitk

    from VoxelMorphRegLib.mrml import volumes

    if args.synthetic:
        sys.path.insert(0, str(ROOT / "Testing" / "Python"))
        from conftest import blob_labels, blob_volume

        fixed, moving = blob_volume(size=(64, 60, 56), seed=0), blob_volume(size=(64, 60, 56), spacing=(1.05, 1.0, 0.95), seed=1)
        fixed_labels, moving_labels = blob_labels(fixed), blob_labels(moving)
    else:
        data = Path(args.data)
        subjects = (args.fixed, args.moving)
        missing = [s for s in subjects if not (data / f"{s}_norm.nii.gz").exists()]
        if missing:
            _skip(args, f"no data at {data} ({missing[0]}_norm.nii.gz; use --synthetic to check the script)")
            return None
        fixed, moving = (sitk.ReadImage(str(data / f"{s}_norm.nii.gz"), sitk.sitkFloat32) for s in subjects)
        fixed_labels, moving_labels = (sitk.ReadImage(str(data / f"{s}_seg.nii.gz")) for s in subjects)
    nodes = {"fixed": volumes.sitk_to_volume(fixed, scene=scene, name="fixed"), "moving": volumes.sitk_to_volume(moving, scene=scene, name="moving")}
    if args.labels:
        nodes["moving_labels"] = volumes.sitk_to_volume(moving_labels, scene=scene, name="moving labels", label=True)
        nodes["fixed_labels"] = volumes.sitk_to_volume(fixed_labels, scene=scene, name="fixed labels", label=True)
    return nodes


class _Clock:
    """Timestamps of one run's parts, taken by wrapping the runner's steps."""

    def __init__(self):
        self.marks = {}

    def mark(self, name):
        self.marks.setdefault(name, time.perf_counter())


def run_once(args, scene, nodes, legacy: bool = False) -> dict:
    from VoxelMorphRegLib import contract
    from VoxelMorphRegLib.contract import RegisterOptions
    from VoxelMorphRegLib.mrml import runner as runner_module

    clock = _Clock()
    handoff = runner_module.handoff_options
    if legacy:  # the hand-off before issue 11: compressed files, every output, labels compressed
        runner_module.handoff_options = lambda options, inverse, jacobian: options

    class TimedRunner(runner_module.RegistrationRunner):
        def _write_inputs(self, folder):
            clock.mark("start")
            result = super()._write_inputs(folder)
            clock.mark("exported")
            return result

        def _handle_line(self, line):
            event = contract.parse_event(line)
            if isinstance(event, contract.Stage):
                clock.mark("first_stage")
            elif isinstance(event, contract.Done):
                clock.mark("done")
            super()._handle_line(line)

        def _finish(self, returncode):
            clock.mark("ended")
            super()._finish(returncode)
            clock.mark("imported")

    options = RegisterOptions(model=args.model, device=args.device, affine=not args.no_affine, refine_iterations=args.refine, qc=False)
    runner = TimedRunner(scene, nodes["fixed"], nodes["moving"], nodes.get("moving_labels"), nodes.get("fixed_labels"), options,
                         inverse_transform=args.inverse, temp_root=args.temp_root)
    started = time.perf_counter()
    try:
        result = runner.wait(timeout=args.timeout, interval=0.002)
    finally:
        runner_module.handoff_options = handoff
    in_scene = time.perf_counter()
    m = clock.marks
    engine_total = (result.metrics.get("seconds") or {}).get("total")
    row = {
        "export": m["exported"] - m["start"],
        "engine_start": m["first_stage"] - m["exported"],
        "engine": m["done"] - m["first_stage"],
        "engine_exit": m["ended"] - m["done"],
        "import": m["imported"] - m["ended"],
        "total": in_scene - started,
        "engine_seconds_total": engine_total,
        "overhead": (in_scene - started - engine_total) if engine_total is not None else None,
        "engine_seconds": result.metrics.get("seconds"),
        "command": runner.command,
    }
    for node in result.nodes().values():  # leave the scene as it was for the next run
        scene.RemoveNode(node)
    return row


def _skip(args, reason: str) -> int:
    """Say why nothing was measured (and, with --json, write ``{"skipped": reason}`` there); exit code 0."""
    print(f"slicer path skipped: {reason}")
    if args.json:
        Path(args.json).write_text(json.dumps({"skipped": reason}, indent=2))
    return 0


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="folder with subjNN_norm.nii.gz and _seg.nii.gz (default: ../shared/data/aseg)")
    parser.add_argument("--fixed", default="subj01", help="fixed subject in --data (default subj01)")
    parser.add_argument("--moving", default="subj02", help="moving subject in --data (default subj02)")
    parser.add_argument("--synthetic", action="store_true", help="a small synthetic pair instead of the data (checks the script; not the benchmark)")
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--refine", type=int, default=0, help="refinement iterations (default 0: the network alone; omit with -1 for the model's default)")
    parser.add_argument("--no-affine", action="store_true")
    parser.add_argument("--labels", action="store_true", help="also the label maps (moving carried over, fixed for Dice)")
    parser.add_argument("--inverse", action="store_true", help="import the inverse transform too")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    parser.add_argument("--legacy", action="store_true", help="also time the earlier hand-off (compressed files, every output) in the same sitting")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--temp-root", default=None)
    parser.add_argument("--json", help="write every run and the medians to this file")
    args = parser.parse_args(argv)
    if args.refine < 0:
        args.refine = None

    try:
        import slicer

        if not hasattr(slicer, "vtkMRMLScene"):
            raise ImportError
    except ImportError:
        return _skip(args, "slicer-core (Slicer's MRML for Python) is not installed")
    scene = slicer.vtkMRMLScene()
    nodes = _scene_inputs(args, scene)
    if nodes is None:
        return 0
    load = _load()
    quiet = load is not None and load < QUIET_LOAD
    variants = [("handoff", False)] + ([("legacy", True)] if args.legacy else [])
    report = {"load_average_1min": load, "quiet": quiet, "args": vars(args), "runs": {}, "median": {}}
    for name, legacy in variants:
        for _ in range(args.warmup):
            run_once(args, scene, nodes, legacy)
        runs = [run_once(args, scene, nodes, legacy) for _ in range(args.repeats)]
        report["runs"][name] = runs
        report["median"][name] = {part: statistics.median(r[part] for r in runs if r[part] is not None) for part in PARTS if any(r[part] is not None for r in runs)}
    banner = "" if quiet else f"   NOT QUIET (load {load:.2f} >= {QUIET_LOAD}): these figures are not the benchmark"
    print(f"Slicer path, median of {args.repeats} after {args.warmup} warm-up{'s' if args.warmup != 1 else ''}, seconds{banner}")
    print("part".ljust(22) + "".join(name.rjust(12) for name, _ in variants))
    for part in PARTS:
        print(part.ljust(22) + "".join(f"{report['median'][name].get(part, float('nan')):12.3f}" for name, _ in variants))
    print("engine command: " + " ".join(report["runs"]["handoff"][0]["command"][3:]))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
