"""``voxelmorphreg batch``: the command line of batch registration (pipelines/batch.py).

Torch-free at import: the parser is built without loading the engine.
"""

from __future__ import annotations

from ..contract import BATCH_SUMMARY, Done, RegisterOptions, add_arguments, options_from_args


def add_parser(sub, add_common) -> None:
    p = sub.add_parser(
        "batch",
        help="register many pairs listed in a CSV in one process (the model loaded once); outputs in --out/<name>/, summary in --out/summary.csv",
        description="Register every pair of --pairs into --out/<name>/ with the model loaded once. Exit code 0: every pair ok or skipped; "
        "1: some pairs failed (the others are complete; see summary.csv); 2: the batch could not start; 130/143: interrupted.",
    )
    p.add_argument("--pairs", required=True, metavar="CSV", help="CSV with columns fixed, moving and optionally moving_labels, fixed_labels, name (relative paths: relative to the CSV)")
    p.add_argument("--out", required=True, help=f"output folder: one folder per pair and {BATCH_SUMMARY}")
    add_arguments(p, RegisterOptions)  # the same settings as register, for every pair
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="pairs per forward pass of the network (same model-grid shape only; default 4 on CUDA, 1 on the CPU)")
    p.add_argument("--overwrite", action="store_true", help="register every pair again, also those whose folder already holds their complete results")
    add_common(p)


def run(args, log, events, should_stop) -> None:
    from ..pipelines.batch import read_pairs, run_batch

    pairs = read_pairs(args.pairs)
    options = options_from_args(RegisterOptions, args)
    summary = run_batch(pairs, args.out, options, log=log, events=events, should_stop=should_stop, overwrite=args.overwrite, batch_size=args.batch_size)
    counts = {status: summary.count(status) for status in ("ok", "skipped")}
    log(f"{counts['ok']} registered, {counts['skipped']} skipped (already complete) in {summary.seconds:.1f} s; summary in {summary.out / BATCH_SUMMARY}")
    events(Done(str(summary.out), [BATCH_SUMMARY], round(summary.seconds, 3), {**counts, "pairs": len(summary.outcomes)}))
