"""Benchmark VoxelMorphReg against ANTs SyN on one real brain MRI pair: speed, peak memory, Dice.

Besides the network and the whole ``register`` on that pair, the same run times ``voxelmorphreg
batch`` on every ordered pair of the subjects (against one ``register`` process per pair) and the
Slicer path (``bench/slicer_path.py``: scene nodes -> engine -> result nodes, where slicer-core's
MRML is importable).

Run from the repository root (see bench/README.md for what every number means)::

    python bench/benchmark.py --model path/to/model.pt          # the benchmark
    python bench/benchmark.py --smoke                           # a minute or two: a check of the script itself

Every measured configuration runs in a fresh child process (this same file, ``_worker SPEC``),
so its peak resident memory is that process's own ``ru_maxrss`` (from ``os.wait4``), and one
configuration's caches or allocator state never leak into another's numbers. The parent imports
neither torch nor ants.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "aseg"
RESULTS = ROOT / "bench" / "results"
STAGES = ["read", "model", "affine", "model_grid", "network", "refine", "integration", "field", "warp", "metrics", "write", "qc", "total"]
TARGETS = {
    "network_cpu_s": 3.0,
    "network_cuda_s": 0.020,
    "peak_rss_cpu_bytes": 4e9,
    "batch_pairs": 6,  # the batch target is for this many pairs (the 6 ordered pairs of subj01..03)
    "batch_cpu_s": 25.0,
    "slicer_overhead_s": 2.0,
    "register_cpu_s": 5.0,
    "register_default_cpu_s": 15.0,
    "register_default_speedup": 4.0,
    "register_peak_rss_cpu_bytes": 2.5e9,
    "affine_cpu_s": 1.5,
    "write_cpu_s": 1.0,
}
SMOKE_CROP_MM = 96  # smoke pair: central 96 mm cube of each volume, at 2 mm (48^3 voxels)
SMOKE_PAIRS = 2  # ordered pairs registered by --smoke (the full --all-pairs does every one)
SMOKE_BANNER = "SMOKE RUN: tiny cropped 2 mm pair and few repeats; these numbers are NOT the benchmark"


# ----------------------------------------------------------------------------------------------
# Child processes
# ----------------------------------------------------------------------------------------------


def _maxrss_bytes(usage) -> int:
    return int(usage.ru_maxrss) * (1 if sys.platform == "darwin" else 1024)


def run_child(name: str, spec: dict, work: Path, env_extra: dict | None = None, echo=print) -> dict:
    """Run one worker in a fresh interpreter; its result plus ``process_s`` and ``peak_rss_bytes``.

    On failure the result is ``{"error": ...}`` with the end of the child's log, and the run goes on.
    """
    spec = {**spec, "result": str(work / f"{name}.result.json"), "work": str(work)}
    spec_path, log_path = work / f"{name}.spec.json", work / f"{name}.log"
    spec_path.write_text(json.dumps(spec, indent=1))
    env = {**os.environ, **(env_extra or {})}
    echo(f"  running {name} ...")
    started = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "_worker", str(spec_path)], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        peak = None
        if hasattr(os, "wait4"):
            _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage, not the max over all children
            process.returncode = os.waitstatus_to_exitcode(status)
            peak = _maxrss_bytes(usage)
        else:  # pragma: no cover - Windows: no per-child rusage
            process.wait()
    seconds = time.perf_counter() - started
    result_path = Path(spec["result"])
    if process.returncode != 0 or not result_path.exists():
        tail = log_path.read_text(errors="replace").strip().splitlines()[-6:]
        return {"error": f"{name} exited with code {process.returncode}: " + " | ".join(tail)}
    result = json.loads(result_path.read_text())
    result["process_s"] = round(seconds, 3)
    result["peak_rss_bytes"] = peak
    return result


def _set_threads(spec):
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    return torch.get_num_threads()


def _mean_dice(scores: dict) -> float | None:
    return round(statistics.fmean(scores.values()), 4) if scores else None


def _label_dice(fixed_labels_path, warped_labels, labels) -> dict:
    """Dice over ``labels`` between a warped label image and the fixed labels (SimpleITK images/paths)."""
    import numpy as np
    import SimpleITK as sitk

    from VoxelMorphRegLib.pipelines.label_metrics import dice_per_label

    fixed = sitk.ReadImage(str(fixed_labels_path))
    if isinstance(warped_labels, (str, Path)):
        warped_labels = sitk.ReadImage(str(warped_labels))
    if warped_labels.GetSize() != fixed.GetSize():
        warped_labels = sitk.Resample(warped_labels, fixed, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    scores = dice_per_label(sitk.GetArrayViewFromImage(warped_labels).astype(np.int64), sitk.GetArrayViewFromImage(fixed).astype(np.int64), labels)
    return {"mean": _mean_dice(scores), "per_label": {str(k): round(v, 4) for k, v in scores.items()}}


def worker_probe(spec) -> dict:
    """Versions, devices, threads, and which model file will be measured."""
    import numpy
    import SimpleITK as sitk
    import torch

    from VoxelMorphRegLib.checkpoint import ModelConfig, load_checkpoint, save_checkpoint
    from VoxelMorphRegLib.errors import VoxelMorphRegError
    from VoxelMorphRegLib.model_resolution import resolve_model_path

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "simpleitk": sitk.Version_VersionString(),
        "cpu": _cpu_model(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": _set_threads(spec),
        "cuda_available": torch.cuda.is_available(),
    }
    if info["cuda_available"]:
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda_runtime"] = torch.version.cuda
    try:
        path = resolve_model_path(spec["model"])
        _, config, payload = load_checkpoint(path)
        info["model"] = {"path": str(path), "trained": True, "grid_spacing_mm": config.spacing, "svf_level": config.svf_level, "training_steps": config.training.get("steps"),
                         "default_refine_iterations": config.default_refine_iterations}
    except VoxelMorphRegError as exc:
        info["model_error"] = str(exc)
        if spec.get("untrained_fallback"):
            path = Path(spec["work"]) / "untrained.pt"
            config = ModelConfig(training={"note": "untrained weights, for the benchmark smoke run only"})
            torch.manual_seed(0)
            save_checkpoint(path, config.build(), config)
            info["model"] = {"path": str(path), "trained": False, "grid_spacing_mm": config.spacing, "svf_level": config.svf_level,
                             "default_refine_iterations": config.default_refine_iterations}
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def worker_network(spec) -> dict:
    """Time ``network.velocity(moving, fixed)`` (the U-Net, both ways for a symmetric model) and the integration of its velocity on the model-grid tensors."""
    import torch

    from VoxelMorphRegLib.contract import RegisterOptions
    from VoxelMorphRegLib.image.affine import affine_register
    from VoxelMorphRegLib.image.io import read_volume
    from VoxelMorphRegLib.image.preprocessing import grid_for, image_on_grid
    from VoxelMorphRegLib.pipelines.loaded_model import load_model

    threads = _set_threads(spec)
    loaded = load_model(RegisterOptions(model=spec["model"], device=spec["device"], refine_iterations=0))
    device, network, config = loaded.device, loaded.network, loaded.config
    fixed, moving = read_volume(spec["fixed"]), read_volume(spec["moving"])
    affine = affine_register(fixed, moving) if spec["affine"] else None
    grid = grid_for(fixed, config)  # exactly the tensors `register` feeds the network
    fixed_t = torch.from_numpy(image_on_grid(fixed, grid, None, config))[None, None].to(device)
    moving_t = torch.from_numpy(image_on_grid(moving, grid, affine, config))[None, None].to(device)
    model = network.to(device).eval()
    shape = moving_t.shape[2:]
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    runs = []
    with torch.inference_mode():
        for index in range(spec["warmup"] + spec["repeats"]):
            sync()
            t0 = time.perf_counter()
            velocity = model.velocity(moving_t, fixed_t)
            sync()
            t1 = time.perf_counter()
            model.flow_from_velocity(velocity, shape)
            sync()
            t2 = time.perf_counter()
            if index >= spec["warmup"]:
                runs.append({"unet_s": t1 - t0, "integration_s": t2 - t1, "network_s": t2 - t0})
    result = {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(0) if cuda else _cpu_model(),
        "threads": threads,
        "model_grid": list(grid.GetSize()),
        "model_grid_spacing_mm": list(grid.GetSpacing()),
        "velocity_grid": list(velocity.shape[2:]),
        "integration_steps": model.integration_steps,
        "warmup": spec["warmup"],
        "runs": [{k: round(v, 5) for k, v in run.items()} for run in runs],
    }
    if cuda:
        result["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
    return result


def _register_options(spec, qc=True):
    from VoxelMorphRegLib.contract import RegisterOptions

    return RegisterOptions(model=spec["model"], device=spec["device"], affine=spec["affine"], refine_iterations=spec["refine"], qc=qc)


def _register_argv(spec, fixed, moving, fixed_labels, moving_labels, out, qc=True):
    from VoxelMorphRegLib.contract import RegisterJob, command_line

    return command_line(RegisterJob(str(fixed), str(moving), str(out), str(moving_labels), str(fixed_labels), _register_options(spec, qc)))


def _run_cli_register(spec, argv, out: Path) -> dict:
    from VoxelMorphRegLib.frontends.cli import main

    code = main(argv)
    if code != 0:
        raise SystemExit(f"register exited with code {code}")
    return json.loads((out / "metrics.json").read_text())


def worker_register(spec) -> dict:
    """One whole ``register`` through the command line's own ``main`` (read -> ... -> qc.png)."""
    import torch

    threads = _set_threads(spec)
    out = Path(spec["work"]) / f"out-{spec['name']}"
    argv = _register_argv(spec, spec["fixed"], spec["moving"], spec["fixed_labels"], spec["moving_labels"], out)
    metrics = _run_cli_register(spec, argv, out)
    result = {
        "device": metrics["device"],
        "device_name": metrics["device_name"],
        "threads": threads,
        "refine": metrics["refine_iterations"],
        "refine_default": spec["refine"] is None,  # register ran without --refine: the model's own default
        "seconds": metrics["seconds"],
        "model_grid": metrics["model_grid"]["size"],
        "folding_fraction": metrics.get("folding_fraction"),
        "std_log_jacobian": metrics.get("std_log_jacobian"),
        "dice30": _label_dice(spec["fixed_labels"], out / "warped_labels.nii.gz", spec["labels"]),
        "dice30_before": _label_dice(spec["fixed_labels"], spec["moving_labels"], spec["labels"])["mean"],
    }
    if "affine" in metrics.get("dice", {}):
        affine_scores = {k: v for k, v in metrics["dice"]["affine"].items() if int(k) in spec["labels"]}
        result["dice30_affine"] = _mean_dice(affine_scores)
    if metrics.get("fallback"):
        result["fallback"] = metrics["fallback"]
    if metrics["device"] == "cuda":
        result["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
    if not spec.get("keep"):
        shutil.rmtree(out, ignore_errors=True)
    return result


def worker_pairs(spec) -> dict:
    """Dice of ``register`` (no QC figure) on every ordered pair, in one process, the model loaded once."""
    from VoxelMorphRegLib.pipelines.loaded_model import load_model
    from VoxelMorphRegLib.pipelines.register import register_files

    _set_threads(spec)
    options = _register_options(spec, qc=False)
    loaded = load_model(options)
    pairs = []
    for fixed, moving in spec["pairs"]:
        out = Path(spec["work"]) / f"out-pairs-{fixed}-{moving}"
        files = {s: (Path(spec["data"]) / f"{s}_norm.nii.gz", Path(spec["data"]) / f"{s}_seg.nii.gz") for s in (fixed, moving)}
        metrics = register_files(files[fixed][0], files[moving][0], out, options, moving_labels=files[moving][1], fixed_labels=files[fixed][1], log=lambda message: None, model=loaded).metrics
        pairs.append({
            "fixed": fixed,
            "moving": moving,
            "dice30_before": _label_dice(files[fixed][1], files[moving][1], spec["labels"])["mean"],
            "dice30": _label_dice(files[fixed][1], out / "warped_labels.nii.gz", spec["labels"])["mean"],
            "folding_fraction": metrics.get("folding_fraction"),
            "total_s": metrics["seconds"]["total"],
        })
        if not spec.get("keep"):
            shutil.rmtree(out, ignore_errors=True)
    return {"device": spec["device"], "refine": spec["refine"], "pairs": pairs}


def worker_ants(spec) -> dict:
    """``ants.registration(type_of_transform="SyN")`` then the moving labels through its transforms."""
    import ants
    import numpy as np

    from VoxelMorphRegLib.pipelines.label_metrics import dice_per_label

    fixed, moving = ants.image_read(spec["fixed"]), ants.image_read(spec["moving"])
    fixed_labels, moving_labels = ants.image_read(spec["fixed_labels"]), ants.image_read(spec["moving_labels"])
    t0 = time.perf_counter()
    registration = ants.registration(fixed=fixed, moving=moving, type_of_transform=spec["transform"], outprefix=str(Path(spec["work"]) / f"{spec['name']}_"))
    t1 = time.perf_counter()
    warped = ants.apply_transforms(fixed=fixed_labels, moving=moving_labels, transformlist=registration["fwdtransforms"], interpolator=spec["interpolator"])
    t2 = time.perf_counter()
    scores = dice_per_label(np.rint(warped.numpy()).astype(np.int64), np.rint(fixed_labels.numpy()).astype(np.int64), spec["labels"])
    return {
        "transform": spec["transform"],
        "interpolator": spec["interpolator"],
        "antspyx": _version("antspyx"),
        "itk_threads": os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "default (all cores)"),
        "random_seed": os.environ.get("ANTS_RANDOM_SEED"),
        "registration_s": round(t1 - t0, 3),
        "apply_labels_s": round(t2 - t1, 3),
        "total_s": round(t2 - t0, 3),
        "dice30": {"mean": _mean_dice(scores), "per_label": {str(k): round(v, 4) for k, v in scores.items()}},
    }


def _optional_number(text: str):
    return float(text) if text not in (None, "") else None


def worker_batch(spec) -> dict:
    """One ``voxelmorphreg batch --pairs CSV --out DIR`` through the command line's own ``main``, then its summary.csv."""
    import csv

    from VoxelMorphRegLib.contract import BATCH_SUMMARY, RegisterJob, command_line
    from VoxelMorphRegLib.frontends.cli import main

    threads = _set_threads(spec)
    # register's own flags for these settings (command_line is the one place that spells them), after
    # its positional part ["register", FIXED, MOVING, "--out", OUT]: every pair gets what `register` got
    flags = command_line(RegisterJob("FIXED", "MOVING", "OUT", options=_register_options(spec)))[5:]
    started = time.perf_counter()
    code = main(["batch", "--pairs", spec["pairs_csv"], "--out", spec["out"], *flags])
    main_s = time.perf_counter() - started
    summary = Path(spec["out"]) / BATCH_SUMMARY
    if code not in (0, 1) or not summary.exists():  # 1: some pairs failed, the summary says which
        raise SystemExit(f"batch exited with code {code}")
    with open(summary, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    pairs = [{
        "name": row["name"],
        "status": row["status"],
        "seconds": _optional_number(row["seconds"]),
        "dice_before": _optional_number(row["mean_dice_before"]),
        "dice_after": _optional_number(row["mean_dice_after"]),
        "folding_fraction": _optional_number(row["folding_fraction"]),
        "error": row["error"],
    } for row in rows]
    return {"device": spec["device"], "threads": threads, "refine": spec["refine"], "exit_code": code, "main_s": round(main_s, 3), "pairs": pairs}


def worker_slicer(spec) -> dict:
    """``bench/slicer_path.py`` in this process (the module's runner on slicer-core's MRML scene); its JSON."""
    bench = str(ROOT / "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    import slicer_path

    out = Path(spec["work"]) / "slicer-path.json"
    argv = ["--data", spec["data"], "--fixed", spec["fixed_subject"], "--moving", spec["moving_subject"], "--model", spec["model"], "--device", spec["device"],
            "--refine", "0", "--labels", "--repeats", str(spec["repeats"]), "--warmup", str(spec["warmup"]), "--json", str(out)]
    if not spec["affine"]:
        argv.append("--no-affine")
    code = slicer_path.main(argv)
    if code != 0 or not out.exists():
        raise SystemExit(f"slicer_path exited with code {code}")
    return json.loads(out.read_text())


WORKERS = {"probe": worker_probe, "network": worker_network, "register": worker_register, "pairs": worker_pairs, "ants": worker_ants, "batch": worker_batch, "slicer": worker_slicer}


def worker_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    result = WORKERS[spec["kind"]](spec)
    Path(spec["result"]).write_text(json.dumps(result, indent=1))
    return 0


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def subject_files(data: Path, subject: str) -> dict:
    return {"image": data / f"{subject}_norm.nii.gz", "labels": data / f"{subject}_seg.nii.gz"}


def image_size(path: Path) -> list:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return [list(reader.GetSize()), list(reader.GetSpacing())]


def make_smoke_data(data: Path, subjects: list[str], out: Path) -> Path:
    """Central ``SMOKE_CROP_MM`` cube of each subject, 2x2x2-averaged to 2 mm (labels: nearest)."""
    import SimpleITK as sitk

    out.mkdir(parents=True, exist_ok=True)
    for subject in subjects:
        files = subject_files(data, subject)
        image = sitk.ReadImage(str(files["image"]))
        labels = sitk.ReadImage(str(files["labels"]))
        crop = [min(n, int(round(SMOKE_CROP_MM / s))) for n, s in zip(image.GetSize(), image.GetSpacing())]
        start = [(n - c) // 2 for n, c in zip(image.GetSize(), crop)]
        small = sitk.BinShrink(sitk.RegionOfInterest(image, crop, start), [2, 2, 2])
        small_labels = sitk.Resample(sitk.RegionOfInterest(labels, crop, start), small, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
        sitk.WriteImage(small, str(out / f"{subject}_norm.nii.gz"))
        sitk.WriteImage(small_labels, str(out / f"{subject}_seg.nii.gz"))
    return out


# ----------------------------------------------------------------------------------------------
# Summaries and the table
# ----------------------------------------------------------------------------------------------


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt_s(seconds) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_bytes(n) -> str:
    return "-" if n is None else f"{n / 1e9:.2f} GB"


def fmt_dice(d) -> str:
    return "-" if d is None else f"{d:.4f}"


def summarise_network(result: dict) -> dict:
    if "error" in result or "skipped" in result:
        return result
    runs = result["runs"]
    summary = {key: median([r[key] for r in runs]) for key in ("unet_s", "integration_s", "network_s")}
    summary["network_min_s"] = min(r["network_s"] for r in runs)
    summary["network_max_s"] = max(r["network_s"] for r in runs)
    return {**result, "median": summary}


def summarise_register(runs: list[dict]) -> dict:
    good = [r for r in runs if "error" not in r]
    if not good:
        return {"error": runs[0]["error"] if runs else "no runs", "runs": runs}
    dice = [r["dice30"]["mean"] for r in good]
    return {
        "device": good[0]["device"],
        "device_name": good[0]["device_name"],
        "refine": good[0]["refine"],
        "refine_default": good[0].get("refine_default", False),
        "repeats": len(good),
        "median_seconds": {stage: median([r["seconds"].get(stage) for r in good]) for stage in STAGES if any(stage in r["seconds"] for r in good)},
        "median_process_s": median([r["process_s"] for r in good]),
        "peak_rss_bytes": max((r["peak_rss_bytes"] or 0 for r in good), default=None) or None,
        "cuda_peak_bytes": max((r.get("cuda_peak_bytes") or 0 for r in good), default=None) or None,
        "dice30": round(statistics.fmean(dice), 4),
        "dice30_spread": round(max(dice) - min(dice), 4),
        "dice30_before": good[0]["dice30_before"],
        "dice30_affine": good[0].get("dice30_affine"),
        "dice30_per_label": good[0]["dice30"]["per_label"],
        "folding_fraction": good[0]["folding_fraction"],
        "errors": [r["error"] for r in runs if "error" in r],
        "runs": runs,
    }


def summarise_ants(runs: list[dict]) -> dict:
    good = [r for r in runs if "error" not in r]
    if not good:
        return {"error": runs[0]["error"] if runs else "no runs", "runs": runs}
    dice = [r["dice30"]["mean"] for r in good]
    return {
        "repeats": len(good),
        "median_registration_s": median([r["registration_s"] for r in good]),
        "median_total_s": median([r["total_s"] for r in good]),
        "peak_rss_bytes": max(r["peak_rss_bytes"] or 0 for r in good) or None,
        "dice30": round(statistics.fmean(dice), 4),
        "dice30_spread": round(max(dice) - min(dice), 4),
        "dice30_per_label": good[0]["dice30"]["per_label"],
        "errors": [r["error"] for r in runs if "error" in r],
        "runs": runs,
    }


def summarise_batch(runs: list[dict], register: dict) -> dict:
    """The batch runs, against one process per pair: the pairs times the median whole-register (refine 0) process time."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return {"error": runs[0]["error"] if runs else "no runs", "runs": runs}
    count = len(good[0]["pairs"])
    process = median([r["process_s"] for r in good])
    each = register.get("median_process_s")
    peer = count * each if each else None
    per_pair = [{**pair, "seconds": median([r["pairs"][i]["seconds"] for r in good if i < len(r["pairs"])])} for i, pair in enumerate(good[0]["pairs"])]
    return {
        "device": good[0]["device"],
        "refine": good[0]["refine"],
        "pairs": count,
        "repeats": len(good),
        "median_process_s": process,
        "median_main_s": median([r["main_s"] for r in good]),
        "pairs_per_s": count / process if process else None,
        "peak_rss_bytes": max((r["peak_rss_bytes"] or 0 for r in good), default=None) or None,
        "failed_pairs": max(sum(1 for p in r["pairs"] if p["status"] != "ok") for r in good),
        "register_median_process_s": each,
        "one_process_per_pair_s": peer,
        "speedup": peer / process if peer and process else None,
        "per_pair": per_pair,
        "errors": [r["error"] for r in runs if "error" in r],
        "runs": runs,
    }


def summarise_slicer(result: dict, device: str) -> dict:
    """The medians of bench/slicer_path.py's hand-off runs (``skipped``/``error`` passed on)."""
    if "error" in result or "skipped" in result:
        return result
    m = result["median"]["handoff"]
    runs = result["runs"]["handoff"]
    return {
        "device": device,
        "repeats": len(runs),
        "warmup": result["args"]["warmup"],
        "total_s": m.get("total"),
        "engine_s": m.get("engine_seconds_total"),  # the engine's own seconds.total (metrics.json)
        "overhead_s": m.get("overhead"),  # total - engine_s: export, engine start and exit, import
        "parts": {part: m.get(part) for part in ("export", "engine_start", "engine", "engine_exit", "import")},
        # inside the engine process after its first stage line but outside its seconds.total (its imports, mostly)
        "engine_untimed_s": m["engine"] - m["engine_seconds_total"] if m.get("engine") is not None and m.get("engine_seconds_total") is not None else None,
        # the engine's writing stage in the hand-off (uncompressed, only the outputs the module imports)
        "engine_write_s": median([(r.get("engine_seconds") or {}).get("write") for r in runs]),
        "load_average_1min": result.get("load_average_1min"),
        "quiet": result.get("quiet"),
        "process_s": result.get("process_s"),
        "peak_rss_bytes": result.get("peak_rss_bytes"),
        "engine_command": runs[0]["command"] if runs else None,
        "runs": [{k: v for k, v in run.items() if k != "command"} for run in runs],
    }


def _verdict(ok: bool | None, smoke: bool) -> str:
    if smoke:
        return "n/a (smoke)"
    return "-" if ok is None else ("PASS" if ok else "FAIL")


def evaluate(report: dict) -> list[dict]:
    """The issue's targets, each with the measured value and PASS/FAIL (None: not measured)."""
    smoke = report["smoke"]
    devices = report["devices"]
    ants = report.get("ants", {})
    ants_dice = ants.get("dice30") if "error" not in ants and "skipped" not in ants else None
    rows = []
    cpu_net = devices.get("cpu", {}).get("network", {}).get("median", {}).get("network_s")
    rows.append({"target": "network inference, CPU <= 3 s", "value": fmt_s(cpu_net), "ok": None if cpu_net is None else cpu_net <= TARGETS["network_cpu_s"]})
    cuda = devices.get("cuda", {})
    cuda_net = cuda.get("network", {}).get("median", {}).get("network_s")
    note = ""
    if cuda_net is not None and "H200" not in cuda["network"].get("device_name", ""):
        note = f" (measured on {cuda['network']['device_name']}, not an H200)"
    rows.append({"target": "network inference, H200 after warm-up <= 20 ms", "value": (fmt_s(cuda_net) + note) if cuda_net is not None else "no CUDA", "ok": None if cuda_net is None else cuda_net <= TARGETS["network_cuda_s"]})
    rss = devices.get("cpu", {}).get("register", {}).get("peak_rss_bytes")
    rows.append({"target": "peak memory of one register, CPU <= 4 GB", "value": fmt_bytes(rss), "ok": None if rss is None else rss <= TARGETS["peak_rss_cpu_bytes"]})
    for key, text in (("register", "Dice30 network (refine 0) > ANTs SyN"), ("register_refine", "Dice30 network + refinement > ANTs SyN")):
        reg = next((d[key] for d in devices.values() if "dice30" in d.get(key, {})), None)
        if key == "register_refine" and reg is None:
            continue
        value = reg["dice30"] if reg else None
        shown = f"{fmt_dice(value)} vs {fmt_dice(ants_dice)}"
        if reg and key == "register_refine":
            text = text.replace("refinement", f"refine {reg['refine']}")
        rows.append({"target": text, "value": shown, "ok": None if value is None or ants_dice is None else value > ants_dice})
    rows += _speed_targets(report)
    for row in rows:
        row["verdict"] = _verdict(row["ok"], smoke)
    return rows


def _at_most(target: str, value, limit, shown=None) -> dict:
    return {"target": target, "value": shown if shown is not None else fmt_s(value), "ok": None if value is None else value <= limit}


def _speed_targets(report: dict) -> list[dict]:
    """Batch, Slicer path, whole register, memory and stage targets (the CPU figures; ``ok`` None: not measured)."""
    cpu = report["devices"].get("cpu", {})
    ants = report.get("ants", {})
    register, default, batch = cpu.get("register", {}), cpu.get("register_refine", {}), cpu.get("batch", {})
    rows = []

    seconds, count = batch.get("median_process_s"), batch.get("pairs")
    shown = fmt_s(seconds) if count in (None, TARGETS["batch_pairs"]) else f"{fmt_s(seconds)} ({count} pairs, not {TARGETS['batch_pairs']})"
    row = _at_most(f"batch of {TARGETS['batch_pairs']} pairs, refine 0, CPU <= 25 s", seconds, TARGETS["batch_cpu_s"], shown)
    if count != TARGETS["batch_pairs"]:
        row["ok"] = None
    rows.append(row)

    slicer = report.get("slicer_path") or {}
    overhead = slicer.get("overhead_s")
    if overhead is not None:
        shown = fmt_s(overhead) + (" (load not quiet)" if slicer.get("quiet") is False else "")
    else:
        shown = "skipped" if "skipped" in slicer else ("error" if "error" in slicer else None)
    rows.append(_at_most("Slicer path overhead over the engine <= 2 s", overhead, TARGETS["slicer_overhead_s"], shown))

    total = register.get("median_seconds", {}).get("total")
    rows.append(_at_most("whole register, refine 0, CPU <= 5 s", total, TARGETS["register_cpu_s"]))

    total = default.get("median_seconds", {}).get("total")
    model_default = ((report.get("environment") or {}).get("model") or {}).get("default_refine_iterations")
    is_default = bool(default.get("refine_default")) or (model_default is not None and default.get("refine") == model_default)
    # not the model's default (--refine N): shown, but not judged
    how = "" if not default or "refine" not in default else (f" (refine {default['refine']})" if is_default else f" (refine {default['refine']}, not the model's default: not judged)")
    row = _at_most("whole register, model's default refinement, CPU <= 15 s", total, TARGETS["register_default_cpu_s"], None if total is None else fmt_s(total) + how)
    ants_total = ants.get("median_total_s") if "error" not in ants and "skipped" not in ants else None
    speedup = ants_total / total if ants_total and total else None
    faster = {"target": "whole register, model's default refinement, CPU: ANTs SyN / this >= 4x",
              "value": "-" if speedup is None else f"{speedup:.1f}x ({fmt_s(ants_total)} / {fmt_s(total)}){how}",
              "ok": None if speedup is None else speedup >= TARGETS["register_default_speedup"]}
    if not is_default:
        row["ok"] = faster["ok"] = None
    rows += [row, faster]

    peaks = [r.get("peak_rss_bytes") for r in (register, default) if r.get("peak_rss_bytes")]
    peak = max(peaks) if peaks else None
    rows.append(_at_most("peak RSS of a whole register, CPU (refine 0 and default) <= 2.5 GB", peak, TARGETS["register_peak_rss_cpu_bytes"], fmt_bytes(peak)))
    rows.append(_at_most("affine stage, CPU (refine 0) <= 1.5 s", register.get("median_seconds", {}).get("affine"), TARGETS["affine_cpu_s"]))
    rows.append(_at_most("write stage, Slicer hand-off (uncompressed), CPU <= 1 s", slicer.get("engine_write_s"), TARGETS["write_cpu_s"]))
    written = register.get("median_seconds", {}).get("write")  # the command line's default set, gzipped: shown, not judged
    rows.append({"target": "write stage, command line default (compressed, all outputs; not a target)", "value": fmt_s(written), "ok": None})
    return rows


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    line = lambda cells: "  " + "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def render_batch(report: dict) -> list[str]:
    """The batch section: totals per device, then each pair's row of summary.csv."""
    settings = report["settings"]
    rows, notes, pair_tables = [], [], []
    for device, d in report["devices"].items():
        batch = d.get("batch")
        if not batch:
            continue
        if "error" in batch or "skipped" in batch:
            notes.append(f"  {device}: {batch.get('error') or batch.get('skipped')}")
            continue
        ratio = f"{batch['speedup']:.2f}x" if batch["speedup"] else "-"
        rows.append([device, batch["pairs"], batch["repeats"], fmt_s(batch["median_process_s"]), fmt_s(batch["median_main_s"]), f"{batch['pairs_per_s']:.3f}", fmt_bytes(batch["peak_rss_bytes"]),
                     fmt_s(batch["one_process_per_pair_s"]), ratio, batch["failed_pairs"]])
        pair_rows = [[p["name"], p["status"], fmt_s(p["seconds"]), fmt_dice(p["dice_before"]), fmt_dice(p["dice_after"]), "-" if p["folding_fraction"] is None else f"{p['folding_fraction']:.2e}", p["error"][:80]]
                     for p in batch["per_pair"]]
        pair_tables += ["", f"Batch pairs ({device}; summary.csv of the first run, seconds: median over the runs; Dice: mean over the labels in both maps)",
                        table(pair_rows, ["pair", "status", "seconds", "Dice before", "Dice after", "folding", "error"])]
    if not rows and not notes:
        return []
    out = ["", f"Batch: voxelmorphreg batch (CLI main, one fresh process per run) on every ordered pair, refine 0; median of {settings['batch_repeats']} after {settings['batch_warmup']} warm-up; "
               "one process per pair = pairs x the whole-register refine-0 process median above"]
    if rows:
        out.append(table(rows, ["device", "pairs", "runs", "process", "batch main", "pairs/s", "peak RSS", "one process per pair", "per pair / batch", "failed"]))
    return out + notes + pair_tables


def render_slicer(report: dict) -> list[str]:
    slicer = report.get("slicer_path")
    if not slicer:
        return []
    if "error" in slicer or "skipped" in slicer:
        return ["", f"Slicer path: {'skipped: ' + slicer['skipped'] if 'skipped' in slicer else slicer['error']}"]
    parts = slicer["parts"]
    out = ["", f"Slicer path (bench/slicer_path.py: the module's runner on slicer-core's vtkMRMLScene, nodes -> engine process -> result nodes; register refine 0 with labels, "
               f"{slicer['device']}; median of {slicer['repeats']} after {slicer['warmup']} warm-up)"]
    out.append(table([[fmt_s(slicer["total_s"]), fmt_s(slicer["engine_s"]), fmt_s(slicer["overhead_s"]), fmt_s(parts["export"]), fmt_s(parts["engine_start"]), fmt_s(slicer["engine_untimed_s"]),
                       fmt_s(parts["engine_exit"]), fmt_s(parts["import"]), fmt_bytes(slicer["peak_rss_bytes"])]],
                     ["total", "engine", "overhead", "export", "engine start", "engine untimed", "engine exit", "import", "peak RSS"]))
    out.append("  engine: its own seconds.total; overhead = total - engine = export + engine start + engine untimed (its imports, outside seconds.total) + engine exit + import")
    if not slicer.get("quiet"):
        load = slicer.get("load_average_1min")
        out.append(f"  NOT QUIET: load average {'-' if load is None else f'{load:.2f}'} during the Slicer path (bench/slicer_path.py wants < 1.5)")
    return out


def render(report: dict) -> str:
    out = []
    smoke = report["smoke"]
    if smoke:
        out += ["=" * len(SMOKE_BANNER), SMOKE_BANNER, "=" * len(SMOKE_BANNER)]
    inputs, env, settings = report["inputs"], report["environment"], report["settings"]
    out.append(f"VoxelMorphReg benchmark  {report['host']}  {report['date']}")
    out.append(f"pair: fixed {inputs['fixed']}  moving {inputs['moving']}  size {inputs['size']} at {inputs['spacing']} mm; Dice30 = mean Dice over the {len(inputs['labels'])} labels of labels30.json")
    model = env.get("model") or {}
    out.append(f"model: {model.get('path', '-')}" + ("" if model.get("trained", True) else "  (UNTRAINED weights: timing only, Dice meaningless)"))
    out.append(f"CPU: {env['cpu']}, {env['cpus_available']} CPUs, torch {env['torch']} with {env['torch_threads']} threads; CUDA: {env.get('cuda_device', 'none')}")

    net_rows, net_notes, reg_rows, stage_rows = [], [], [], []
    for device, d in report["devices"].items():
        net = d.get("network", {})
        if "median" in net:
            m = net["median"]
            net_rows.append([device, net["device_name"][:40], "x".join(map(str, net["model_grid"])), fmt_s(m["unet_s"]), fmt_s(m["integration_s"]), fmt_s(m["network_s"]), f"{fmt_s(m['network_min_s'])}..{fmt_s(m['network_max_s'])}", fmt_bytes(net.get("peak_rss_bytes")), fmt_bytes(net.get("cuda_peak_bytes"))])
        elif net:
            net_notes.append(f"  {device}: {net.get('error') or net.get('skipped')}")
        for key in ("register", "register_refine"):
            reg = d.get(key)
            if not reg:
                continue
            if "error" in reg:
                reg_rows.append([device, "?", reg["error"][:100], "", "", "", "", "", "", ""])
                continue
            s = reg["median_seconds"]
            reg_rows.append([device, f"{reg['refine']} (model default)" if reg.get("refine_default") else reg["refine"], reg["repeats"], fmt_s(s.get("total")), fmt_s(reg["median_process_s"]), fmt_bytes(reg["peak_rss_bytes"]), fmt_bytes(reg["cuda_peak_bytes"]), fmt_dice(reg["dice30"]), fmt_dice(reg["dice30_spread"]), f"{reg['folding_fraction']:.2e}" if reg["folding_fraction"] is not None else "-"])
            stage_rows.append([f"{device} refine {reg['refine']}"] + [fmt_s(s.get(stage)) if stage in s else "-" for stage in STAGES])
    if net_rows or net_notes:
        out += ["", f"Network inference: network.velocity(moving, fixed) (both ways for a symmetric model) + scaling-and-squaring on the model grid; median of {settings['network_repeats']} after {settings['network_warmup']} warm-up"]
        if net_rows:
            out.append(table(net_rows, ["device", "name", "grid", "unet", "integration", "network", "min..max", "peak RSS", "GPU peak"]))
        out += net_notes
    if reg_rows:
        out += ["", f"Whole register (CLI main in a fresh process per run; median of the runs, after {settings['register_warmup']} warm-up run)"]
        out.append(table(reg_rows, ["device", "refine", "runs", "total", "process", "peak RSS", "GPU peak", "Dice30", "spread", "folding"]))
        out += ["", "Seconds per stage (median)"]
        out.append(table(stage_rows, ["config"] + STAGES))
    out += render_batch(report)
    out += render_slicer(report)

    ants = report.get("ants", {})
    out.append("")
    if "skipped" in ants or "error" in ants:
        out.append(f"ANTs SyN: {ants.get('skipped') or ants.get('error')}")
    elif ants:
        run = ants["runs"][0]
        out.append(f"ANTs SyN (antspyx {run['antspyx']}, ants.registration type_of_transform={run['transform']!r}, labels by {run['interpolator']}, ITK threads {run['itk_threads']}, {ants['repeats']} run(s))")
        out.append(table([[fmt_s(ants["median_registration_s"]), fmt_s(ants["median_total_s"]), fmt_bytes(ants["peak_rss_bytes"]), fmt_dice(ants["dice30"]), fmt_dice(ants["dice30_spread"])]], ["registration", "with labels", "peak RSS", "Dice30", "spread"]))

    ratios = report.get("ratios", [])
    if ratios:
        out += ["", "Speed against ANTs SyN (same run; ANTs registration + label warp on the CPU)"]
        out.append(table([[r["what"], fmt_s(r["seconds"]), f"{r['speedup']:.1f}x"] for r in ratios], ["VoxelMorphReg", "seconds", "ANTs / this"]))

    pairs = report.get("all_pairs")
    if pairs:
        out.append("")
        if "error" in pairs:
            out.append(f"All pairs: {pairs['error']}")
        else:
            rows = [[p["fixed"], p["moving"], fmt_dice(p["dice30_before"]), fmt_dice(p["dice30"]), f"{p['folding_fraction']:.2e}", fmt_s(p["total_s"])] for p in pairs["pairs"]]
            rows.append(["mean", "", fmt_dice(pairs["mean_before"]), fmt_dice(pairs["mean_dice30"]), "", ""])
            out.append(f"Ordered pairs (register, refine {pairs['refine']}, {pairs['device']}, no QC figure)")
            out.append(table(rows, ["fixed", "moving", "Dice30 before", "Dice30 after", "folding", "total"]))

    out += ["", "Targets"]
    out.append(table([[t["target"], t["value"], t["verdict"]] for t in report["targets"]], ["target", "measured", "verdict"]))
    for note in report.get("notes", []):
        out.append(f"note: {note}")
    if smoke:
        out += ["", SMOKE_BANNER]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(description="Benchmark VoxelMorphReg (speed, memory, Dice) against ANTs SyN on one brain MRI pair.")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with subjNN_norm/_seg.nii.gz and labels30.json (default: ../shared/data/aseg)")
    p.add_argument("--fixed", default="subj01", help="fixed subject (default subj01)")
    p.add_argument("--moving", default="subj02", help="moving subject (default subj02)")
    p.add_argument("--model", default="bundled", help="model file or 'bundled' (the newest Resources/Models/voxelmorphreg_v*.pt, see model_resolution.py)")
    p.add_argument("--devices", choices=["auto", "cpu", "cuda"], default="auto", help="auto: the CPU, and CUDA where it exists")
    p.add_argument("--threads", type=int, default=None, help="torch and ITK threads (default: every CPU this process may use)")
    p.add_argument("--network-repeats", type=int, default=5, help="timed network forward passes (median)")
    p.add_argument("--network-warmup", type=int, default=2, help="untimed forward passes first")
    p.add_argument("--register-repeats", type=int, default=3, help="timed whole registers, each a fresh process (median)")
    p.add_argument("--register-warmup", type=int, default=1, help="untimed whole registers first (file cache, lazy init)")
    p.add_argument("--refine", type=int, default=None, help="refinement iterations of the second register configuration (default: register without --refine, i.e. the model's own default; 0: skip it)")
    p.add_argument("--refine-repeats", type=int, default=1, help="timed runs of the refinement configuration")
    p.add_argument("--no-affine", action="store_true", help="pass --no-affine to register (ANTs keeps its own affine stage)")
    p.add_argument("--ants-repeats", type=int, default=1, help="ANTs SyN runs (0: skip ANTs)")
    p.add_argument("--ants-transform", default="SyN", help="type_of_transform for ants.registration (default SyN)")
    p.add_argument("--ants-interpolator", default="genericLabel", choices=["genericLabel", "nearestNeighbor"], help="how the moving labels go through the ANTs transforms")
    p.add_argument("--ants-seed", type=int, default=1, help="ANTS_RANDOM_SEED for the ANTs child (its affine stage samples at random)")
    p.add_argument("--batch-repeats", type=int, default=3, help="timed `voxelmorphreg batch` runs on every ordered pair, each a fresh process (median; 0: skip the batch)")
    p.add_argument("--batch-warmup", type=int, default=1, help="untimed batch runs first (as --register-warmup)")
    p.add_argument("--no-slicer-path", action="store_true", help="skip the Slicer path (bench/slicer_path.py, --register-repeats/--register-warmup runs)")
    p.add_argument("--all-pairs", action="store_true", help="also register every ordered pair of the subjects in --data (network only, Dice)")
    p.add_argument("--json", type=Path, default=None, help="where to write the JSON (default bench/results/<host>-<date>.json)")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one, removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder and register outputs")
    p.add_argument("--smoke", action="store_true", help="check the script (a minute or two) on a tiny cropped 2 mm pair; NOT the benchmark")
    args = p.parse_args(argv)
    if args.smoke:
        args.network_repeats, args.network_warmup = 2, 1
        args.register_repeats, args.register_warmup = 1, 0
        args.refine, args.refine_repeats = (2 if args.refine is None else min(args.refine, 2)), 1
        args.batch_repeats, args.batch_warmup = min(args.batch_repeats, 1), 0
        args.ants_repeats = min(args.ants_repeats, 1)
        args.all_pairs = True  # on SMOKE_PAIRS pairs only
    for name in ("network_repeats", "register_repeats", "refine_repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("batch_repeats", "batch_warmup"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    return args


def write_pairs_csv(data: Path, pairs: list, path: Path) -> Path:
    """The batch's --pairs CSV: each ordered (fixed, moving) pair of ``data`` with both label maps, named ``<moving>_to_<fixed>``."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["fixed", "moving", "moving_labels", "fixed_labels", "name"])
        for fixed, moving in pairs:
            f_files, m_files = subject_files(data, fixed), subject_files(data, moving)
            writer.writerow([f_files["image"], m_files["image"], m_files["labels"], f_files["labels"], f"{moving}_to_{fixed}"])
    return path


def run_batch(args, base: dict, pairs_csv: Path, register: dict, work: Path, echo) -> dict:
    """``--batch-warmup`` untimed then ``--batch-repeats`` timed batch runs, each a fresh process writing a fresh folder."""
    runs = []
    for index in range(args.batch_warmup + args.batch_repeats):
        name = f"batch-{base['device']}-{'warmup' if index < args.batch_warmup else 'run'}{index}"
        out = work / f"out-{name}"
        result = run_child(name, {"kind": "batch", "name": name, "refine": 0, "pairs_csv": str(pairs_csv), "out": str(out), **base}, work, echo=echo)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)  # here, not in the child: the timed process only registers
        if index >= args.batch_warmup or "error" in result:
            runs.append(result)
    return summarise_batch(runs, register)


def run_slicer_path(args, common: dict, data: Path, wanted: list, env: dict, model: dict | None, threads: int, work: Path, echo) -> dict:
    """bench/slicer_path.py in a child (refine 0 with labels, --register-repeats after --register-warmup), or why not."""
    if args.no_slicer_path:
        return {"skipped": "--no-slicer-path"}
    if not model:
        return {"skipped": "no model"}
    if importlib.util.find_spec("slicer") is None:
        result = {"skipped": "slicer-core (Slicer's MRML for Python) is not installed (pip install slicer-core)"}
        echo(f"Slicer path: {result['skipped']}")
        return result
    device = "cpu" if "cpu" in wanted else "cuda"
    if device == "cuda" and not env["cuda_available"]:
        return {"skipped": "no CUDA device (torch.cuda.is_available() is False)"}
    echo(f"Slicer path (slicer-core MRML) on {device.upper()}")
    spec = {"kind": "slicer", "data": str(data), "fixed_subject": args.fixed, "moving_subject": args.moving, "model": model["path"], "device": device,
            "repeats": args.register_repeats, "warmup": args.register_warmup, **common}
    # the engine is the runner's own child: its torch threads come from the environment
    result = run_child("slicer-path", spec, work, {"OMP_NUM_THREADS": str(threads)}, echo=echo)
    return summarise_slicer(result, device)


def run(args, echo=print) -> int:
    data = args.data.resolve()
    fixed_files, moving_files = subject_files(data, args.fixed), subject_files(data, args.moving)
    needed = [data / "labels30.json", *fixed_files.values(), *moving_files.values()]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        echo(f"benchmark skipped: data not found ({missing[0]}{' and more' if len(missing) > 1 else ''}); it lives in ../shared/data on the development machines")
        return 0
    labels = [int(v) for v in json.loads((data / "labels30.json").read_text())]
    subjects = sorted(p.name[: -len("_norm.nii.gz")] for p in data.glob("*_norm.nii.gz") if (data / p.name.replace("_norm", "_seg")).exists())

    work = Path(tempfile.mkdtemp(prefix="vmr-bench-")) if args.work is None else args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    now = datetime.datetime.now()
    host = socket.gethostname()
    notes = []
    try:
        if args.smoke:
            echo(SMOKE_BANNER)
            data = make_smoke_data(data, subjects if args.all_pairs else [args.fixed, args.moving], work / "smoke-data")
            fixed_files, moving_files = subject_files(data, args.fixed), subject_files(data, args.moving)
        size, spacing = image_size(fixed_files["image"])
        threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
        common = {"threads": threads, "labels": labels, "affine": not args.no_affine, "keep": args.keep}
        pair = {"fixed": str(fixed_files["image"]), "moving": str(moving_files["image"]), "fixed_labels": str(fixed_files["labels"]), "moving_labels": str(moving_files["labels"])}

        echo("probing the environment")
        env = run_child("probe", {"kind": "probe", "model": args.model, "untrained_fallback": args.smoke, **common}, work, echo=echo)
        if "error" in env:
            echo(f"benchmark failed: {env['error']}")
            return 1
        env["antspyx"] = _version("antspyx")
        model = env.get("model")
        if env.get("model_error"):
            if model:
                notes.append(f"{env['model_error']}; the smoke run uses an untrained network (timings only, Dice meaningless)")
            else:
                notes.append(f"no model, so no VoxelMorphReg numbers: {env['model_error']}")
            echo(f"note: {notes[-1]}")

        batch_csv, batch_skipped = None, None
        if args.batch_repeats <= 0:
            batch_skipped = "--batch-repeats 0"
        elif len(subjects) < 2:
            batch_skipped = f"fewer than 2 subjects in {data}"
        else:
            batch_csv = write_pairs_csv(data, [(a, b) for a in subjects for b in subjects if a != b], work / "batch-pairs.csv")

        devices = {}
        wanted = ["cpu", "cuda"] if args.devices == "auto" else [args.devices]
        for device in wanted:
            if device == "cuda" and not env["cuda_available"]:
                devices["cuda"] = {"network": {"skipped": "no CUDA device (torch.cuda.is_available() is False)"}}
                echo("CUDA: skipped, no CUDA device")
                continue
            if not model:
                continue
            echo(f"VoxelMorphReg on {device.upper()}")
            base = {**common, **pair, "model": model["path"], "device": device}
            entry = {}
            net = run_child(f"network-{device}", {"kind": "network", "warmup": args.network_warmup, "repeats": args.network_repeats, **base}, work, echo=echo)
            entry["network"] = summarise_network(net)
            configs = [("register", 0, args.register_warmup, args.register_repeats)]
            if args.refine is None or args.refine > 0:  # None: register without --refine (the model's default)
                configs.append(("register_refine", args.refine, 0, args.refine_repeats))
            for key, refine, warmup, repeats in configs:
                runs = []
                for index in range(warmup + repeats):
                    name = f"{key}-{device}-{'warmup' if index < warmup else 'run'}{index}"
                    result = run_child(name, {"kind": "register", "name": name, "refine": refine, **base}, work, echo=echo)
                    if index >= warmup or "error" in result:
                        runs.append(result)
                entry[key] = summarise_register(runs)
            entry["batch"] = {"skipped": batch_skipped} if batch_csv is None else run_batch(args, base, batch_csv, entry["register"], work, echo)
            devices[device] = entry

        slicer_report = run_slicer_path(args, common, data, wanted, env, model, threads, work, echo)

        ants = {}
        if args.ants_repeats <= 0:
            ants = {"skipped": "--ants-repeats 0"}
        elif importlib.util.find_spec("ants") is None:
            ants = {"skipped": "antspyx is not installed (pip install antspyx); reporting without ANTs"}
            echo(f"ANTs: {ants['skipped']}")
        else:
            echo("ANTs SyN on the CPU")
            ants_env = {"ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(threads), "ANTS_RANDOM_SEED": str(args.ants_seed)}
            runs = [run_child(f"ants-{i}", {"kind": "ants", "name": f"ants-{i}", "transform": args.ants_transform, "interpolator": args.ants_interpolator, **common, **pair}, work, ants_env, echo=echo) for i in range(args.ants_repeats)]
            ants = summarise_ants(runs)

        ratios = []
        if "median_total_s" in ants:
            for device, entry in devices.items():
                candidates = [
                    (f"network inference ({device})", entry.get("network", {}).get("median", {}).get("network_s")),
                    (f"whole register, refine 0 ({device})", entry.get("register", {}).get("median_seconds", {}).get("total")),
                    (f"whole register, refine {entry.get('register_refine', {}).get('refine')} ({device})", entry.get("register_refine", {}).get("median_seconds", {}).get("total")),
                ]
                ratios += [{"what": what, "seconds": s, "speedup": ants["median_total_s"] / s} for what, s in candidates if s]

        all_pairs = None
        if args.all_pairs and model and len(subjects) > 1:
            device = "cuda" if env["cuda_available"] and args.devices != "cpu" else "cpu"
            pairs = [(a, b) for a in subjects for b in subjects if a != b][: SMOKE_PAIRS if args.smoke else None]
            echo(f"{len(pairs)} ordered pairs on {device.upper()}")
            all_pairs = run_child("pairs", {"kind": "pairs", "data": str(data), "pairs": pairs, "model": model["path"], "device": device, "refine": 0, **common}, work, echo=echo)
            if "pairs" in all_pairs:
                all_pairs["mean_dice30"] = round(statistics.fmean(p["dice30"] for p in all_pairs["pairs"]), 4)
                all_pairs["mean_before"] = round(statistics.fmean(p["dice30_before"] for p in all_pairs["pairs"]), 4)

        report = {
            "benchmark": "VoxelMorphReg vs ANTs SyN",
            "smoke": args.smoke,
            "smoke_warning": SMOKE_BANNER if args.smoke else None,
            "host": host,
            "date": now.isoformat(timespec="seconds"),
            "environment": env,
            "inputs": {"data": str(args.data.resolve()), "fixed": args.fixed, "moving": args.moving, "size": size, "spacing": spacing, "labels": labels, **pair},
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()} | {"threads": threads},
            "devices": devices,
            "ants": ants,
            "ratios": ratios,
            "all_pairs": all_pairs,
            "slicer_path": slicer_report,
            "notes": notes,
        }
        report["targets"] = evaluate(report)
        report["benchmark_seconds"] = round(time.perf_counter() - started, 1)
        echo("")
        echo(render(report))
        path = args.json or RESULTS / f"{'smoke-' if args.smoke else ''}{host}-{now:%Y%m%d-%H%M%S}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1))
        echo(f"\nJSON: {path}  ({report['benchmark_seconds']:.0f} s in all)")
        failed = [name for name, d in devices.items() for part in d.values() if isinstance(part, dict) and ("error" in part or part.get("failed_pairs"))]
        return 1 if failed or "error" in ants or "error" in slicer_report else 0
    finally:
        if args.keep or args.work is not None:
            echo(f"scratch folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        return worker_main(argv[1])
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
