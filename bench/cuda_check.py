"""The speed issue's CUDA figures in one prepared run (a few minutes on a lent GPU).

    python bench/cuda_check.py --data DIR --out DIR            (on the GPU machine)
    python bench/cuda_check.py --device cpu --smoke --out DIR  (a dry run of the script here)

1. ``bench/benchmark.py`` on the device alone: the network in ms (median of 20 after 5 warm-up
   passes), the whole ``register`` with ``--refine 0`` and with the model's default refinement (3
   fresh processes each after a warm-up), the batch of the 6 ordered pairs of ``--data`` with the
   CLI's default batch size (4 pairs per forward pass on CUDA); no ANTs, no Slicer path. Its table
   goes to ``OUT/benchmark-<device>-<date>.txt``, its JSON to ``OUT/benchmark-<device>-<date>.json``.
2. ``voxelmorphreg batch`` on the same 6 pairs with ``--batch-size 1`` and ``--batch-size 4``
   (after an untimed run that fills the file cache): pairs per second with and without batched
   forward passes, into ``OUT/batch-sizes-<device>-<date>.txt``.

Exit codes: 0 when every run worked; 2 without the data or the device; otherwise that of the
failed part (a batch run with failed pairs: 1).

``--data`` is a folder with ``subjNN_norm.nii.gz`` / ``subjNN_seg.nii.gz`` and ``labels30.json``
(default ``../shared/data/aseg``; on a device machine, a copy carried into the repository).
``--smoke`` runs benchmark.py's smoke mode (cropped 2 mm pairs) and one batch per size: it checks
the script, it measures nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from benchmark import DEFAULT_DATA, write_pairs_csv  # noqa: E402

SUBJECTS = ("subj01", "subj02", "subj03")


def run(command, log) -> int:
    """Run ``command``, echoing and logging its output; returns its exit code."""
    print("$ " + " ".join(map(str, command)), flush=True)
    log.write("$ " + " ".join(map(str, command)) + "\n")
    process = subprocess.Popen([str(c) for c in command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in process.stdout:
        sys.stdout.write(line)
        log.write(line)
    return process.wait()


def batch_seconds(pairs_csv: Path, work: Path, device: str, batch_size: int, refine: int | None) -> tuple[float, int]:
    """Wall seconds of one ``voxelmorphreg batch`` process and its exit code."""
    out = Path(tempfile.mkdtemp(dir=work, prefix=f"batch-{batch_size}-"))
    command = [sys.executable, "-m", "VoxelMorphRegLib.frontends.cli", "batch", "--pairs", str(pairs_csv), "--out", str(out),
               "--device", device, "--batch-size", str(batch_size), "--refine", str(0 if refine is None else refine), "--quiet"]
    started = time.perf_counter()
    code = subprocess.run(command, cwd=ROOT).returncode
    return time.perf_counter() - started, code


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "bench" / "results"))
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--smoke", action="store_true", help="check the script (benchmark.py --smoke, one batch per size); NOT the figures")
    args = p.parse_args(argv)
    if not all((args.data / f"{s}_norm.nii.gz").exists() for s in SUBJECTS):
        print(f"cuda_check: {args.data} lacks subj01..03_norm.nii.gz (pass the data with --data)", file=sys.stderr)
        return 2
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("cuda_check: no CUDA device (torch.cuda.is_available() is False); --device cpu for a dry run", file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d")
    with open(args.out / f"benchmark-{args.device}-{stamp}.txt", "w") as log:
        bench = [sys.executable, "bench/benchmark.py", "--devices", args.device, "--data", args.data, "--ants-repeats", "0", "--no-slicer-path",
                 "--json", args.out / f"benchmark-{args.device}-{stamp}.json"]
        if args.smoke:
            bench.append("--smoke")
        else:
            bench += ["--network-repeats", "20", "--network-warmup", "5", "--register-repeats", "3", "--register-warmup", "1",
                      "--refine-repeats", "3", "--batch-repeats", "1", "--batch-warmup", "1"]
        code = run(bench, log)
    if code:
        print(f"cuda_check: benchmark.py exited with {code}", file=sys.stderr)
        return code
    with tempfile.TemporaryDirectory(prefix="cuda-check-") as scratch:
        work = Path(scratch)
        pairs_csv = write_pairs_csv(args.data, [(a, b) for a in SUBJECTS for b in SUBJECTS if a != b], work / "pairs.csv")
        refine = 2 if args.smoke else 0
        worst = 0
        lines = [f"voxelmorphreg batch --refine {refine} --device {args.device} on the 6 ordered pairs of {args.data}; one fresh process per run, wall seconds"]
        if not args.smoke:
            batch_seconds(pairs_csv, work, args.device, 1, refine)  # untimed: the file cache, CUDA's first start
        for size in (1, 4):
            runs = [batch_seconds(pairs_csv, work, args.device, size, refine) for _ in range(1 if args.smoke else 2)]
            failed = [c for _, c in runs if c]
            worst = max([worst, *failed])
            best = min(s for s, _ in runs)
            lines.append(f"--batch-size {size}: " + ", ".join(f"{s:.2f} s" for s, _ in runs) + f"; best {best:.2f} s = {6 / best:.2f} pairs/s"
                         + (f"; exit codes {failed}" if failed else ""))
    if args.smoke:
        lines.append("SMOKE RUN: checks the script, measures nothing")
    text = "\n".join(lines) + "\n"
    print(text)
    (args.out / f"batch-sizes-{args.device}-{stamp}.txt").write_text(text)
    return worst


if __name__ == "__main__":
    sys.exit(main())
