"""What a whole head costs: `voxelmorphreg register` on a 256^3 whole-head pair against the same brains
stripped and cropped to the brain, and `voxelmorphreg brain-mask` alone; seconds and peak RSS.

    python bench/whole_head_speed.py --out bench/results/whole-head-speed-DATE [--repeats 3]

The pair: the held-out label maps 19 and 20 rendered as 1 mm T1 whole heads (bench/whole_head_eval.py's
renderer), and the same images with everything outside the label map's brain set to 0 and cropped to
the brain's box + 8 mm. Each run is its own process under `/usr/bin/time -v` (read, register, write,
default outputs; --no-qc, since the QC figure is drawn after the result is committed). Reported:
the median wall time of --repeats runs after one untimed warm-up, the engine's own seconds.total,
and the largest peak RSS, with the memory guard's estimate beside it. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import whole_head_eval as heads  # noqa: E402

ASEG = ROOT.parent / "shared" / "data" / "aseg"


def _timed(command: list) -> dict:
    started = time.perf_counter()
    run = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if run.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{run.stderr[-2000:]}")
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr).group(1)) * 1024
    return {"wall_s": round(wall, 3), "peak_rss_gb": round(peak / 1e9, 3)}


def _case(name, command, repeats, metrics_path=None) -> dict:
    _timed(command)  # warm-up: file caches, the model files' first read
    runs = []
    for _ in range(repeats):
        row = _timed(command)
        if metrics_path:
            metrics = json.loads(Path(metrics_path).read_text())
            row["engine_total_s"] = metrics["seconds"]["total"]
            row["stages"] = metrics["seconds"]
            row["estimated_peak_gb"] = metrics["memory"]["estimated_peak_gb"]
        runs.append(row)
    summary = {"name": name, "runs": runs, "median_wall_s": statistics.median(r["wall_s"] for r in runs), "peak_rss_gb": max(r["peak_rss_gb"] for r in runs)}
    if metrics_path:
        summary["median_engine_s"] = statistics.median(r["engine_total_s"] for r in runs)
        summary["estimated_peak_gb"] = runs[-1]["estimated_peak_gb"]
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}), flush=True)
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default=None, help="brain mask model (default: the bundled one)")
    args = parser.parse_args(argv)
    if not heads.DATA.is_dir():
        print(f"whole_head_speed: {heads.DATA} not found", file=sys.stderr)
        return 2
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    exe = [sys.executable, "-m", "VoxelMorphRegLib.frontends.cli"]
    extra = ["--brain-mask-model", args.model] if args.model else []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        labels = {n: heads.read_map(n) for n in heads.MAPS}
        for i, n in enumerate(heads.MAPS):
            image = heads.render(labels[n], "t1", 2000 + i)
            sitk.WriteImage(image, str(tmp / f"head{n}.nii.gz"))
            stripped, _ = heads._stripped_cropped(image, labels[n])
            sitk.WriteImage(stripped, str(tmp / f"brain{n}.nii.gz"))
        fixed, moving = heads.MAPS
        cases = [
            _case("whole head, --brain-mask auto", exe + ["register", str(tmp / f"head{fixed}.nii.gz"), str(tmp / f"head{moving}.nii.gz"), "--out", str(tmp / "a"), "--no-qc", "--quiet", *extra], args.repeats, tmp / "a" / "metrics.json"),
            _case("whole head, --brain-mask off", exe + ["register", str(tmp / f"head{fixed}.nii.gz"), str(tmp / f"head{moving}.nii.gz"), "--out", str(tmp / "o"), "--no-qc", "--quiet", "--brain-mask", "off"], args.repeats, tmp / "o" / "metrics.json"),
            _case("stripped and cropped", exe + ["register", str(tmp / f"brain{fixed}.nii.gz"), str(tmp / f"brain{moving}.nii.gz"), "--out", str(tmp / "s"), "--no-qc", "--quiet", *extra], args.repeats, tmp / "s" / "metrics.json"),
            *([_case("aseg pair (stripped, 160x192x224): subj02 onto subj01", exe + ["register", str(ASEG / "subj01_norm.nii.gz"), str(ASEG / "subj02_norm.nii.gz"), "--out", str(tmp / "g"), "--no-qc", "--quiet"], args.repeats, tmp / "g" / "metrics.json")]
              if (ASEG / "subj01_norm.nii.gz").exists() else []),
            _case("brain-mask command, 256^3 head", exe + ["brain-mask", str(tmp / f"head{fixed}.nii.gz"), "--out", str(tmp / "mask.nii.gz"), "--quiet", *(["--model", args.model] if args.model else [])], args.repeats),
        ]
        sizes = {"head": list(sitk.ReadImage(str(tmp / f"head{fixed}.nii.gz")).GetSize()), "cropped": list(sitk.ReadImage(str(tmp / f"brain{fixed}.nii.gz")).GetSize())}
    ratio = cases[0]["median_wall_s"] / cases[2]["median_wall_s"]
    engine_ratio = cases[0]["median_engine_s"] / cases[2]["median_engine_s"]
    result = {"command": "python bench/whole_head_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]), "sizes": sizes, "cases": cases,
              "whole_head_over_cropped_wall": round(ratio, 2), "whole_head_over_cropped_engine": round(engine_ratio, 2)}
    (folder / "speed.json").write_text(json.dumps(result, indent=1))
    lines = ["# Whole head against stripped and cropped", "", f"Command: `{result['command']}`; sizes {sizes}", "",
             "| case | median wall s (process) | median engine s | peak RSS GB | guard's estimate GB |", "| --- | --- | --- | --- | --- |"]
    for case in cases:
        lines.append(f"| {case['name']} | {case['median_wall_s']:.2f} | {case.get('median_engine_s', '')} | {case['peak_rss_gb']:.2f} | {case.get('estimated_peak_gb', '')} |")
    lines += ["", f"whole head / stripped-cropped: {ratio:.2f}x (process wall), {engine_ratio:.2f}x (engine seconds.total)", "", "Stages (last run, s):", ""]
    for case in [c for c in cases if "stages" in c["runs"][-1]]:
        lines.append(f"- {case['name']}: " + ", ".join(f"{k} {v}" for k, v in case["runs"][-1]["stages"].items()))
    (folder / "speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
