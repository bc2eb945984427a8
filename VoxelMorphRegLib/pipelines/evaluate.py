"""``voxelmorphreg evaluate``: register every ordered pair of a labelled set with several methods
and compare them side by side.

For each (fixed, moving) pair and each method, the moving label map is brought onto the fixed
grid and compared with the fixed label map:

- ``none``: no registration; the moving labels resampled on the fixed grid with the identity
  (nearest neighbour), i.e. the overlap the data already has;
- ``affine``: the SimpleITK affine pre-alignment alone (:func:`affine_register`), labels
  resampled nearest neighbour;
- ``network``: :func:`register_images` with the model and no per-pair refinement;
- ``network+refine``: the same with per-pair optimisation: the model's own refinement
  defaults (what ``register`` runs), or ``--refine N`` iterations (with ``--model none``:
  optimisation from a zero velocity);
- ``ants``: ANTs SyN (``ants.registration(type_of_transform="SyN")``: ANTs' own affine stage,
  then SyN), labels through ``ants.apply_transforms(interpolator="genericLabel")``. Needs
  the optional ``antspyx`` package (``pip install "voxelmorphreg[bench]"``); without it the
  method is skipped with a note.

Measured per pair and method: Dice per label and its mean over the labels, HD95 per label
(:mod:`surface_metrics`) and its mean, the folding fraction (det J <= 0 on the unclipped
field) and the std of log det J (over det J > 0) of the whole fixed-to-moving transform on
the fixed grid, and the wall-clock seconds of the method (reading files and computing the
metrics not included).

Code: this file is the loop (options, subjects, pairs); :mod:`.evaluation_methods` the method
adapters, :mod:`.evaluation_reports` the statistics and the report files.

Outputs in ``--out``: ``results.csv`` (one row per pair x method, rewritten after every
pair), ``summary.csv`` (one row per method), ``summary.json`` and ``boxplot.png``; the table
is printed on stdout, progress on stderr.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .evaluation_methods import ANTS_MISSING, DEFAULT_REFINE, METHODS, import_ants, prepare_network_methods, runner  # noqa: F401 (re-exported)
from .evaluation_reports import DEFINITIONS, draw_boxplot, format_table, method_json, nanmean, results_csv, summarise, summary_csv, versions

DEFAULT_METHODS = ",".join(METHODS)
_import_ants = import_ants  # the name the tests use

@dataclass
class EvaluationOptions:
    data: str
    out: str
    labels: str | None = None  # JSON file of label IDs; None: every label shared by all subjects
    methods: list = field(default_factory=lambda: list(METHODS))
    model: str = "bundled"
    device: str = "auto"
    refine: int | None = None  # None: the model's default_refine_iterations (DEFAULT_REFINE where that is 0)
    refine_smoothness: float | None = None  # None: the model's default
    refine_learning_rate: float | None = None  # None: the model's default
    refine_coarse_fraction: float | None = None  # None: the model's default
    max_pairs: int | None = None
    affine: bool = True  # affine pre-alignment before the network methods


# --------------------------------------------------------------------------- command line


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``evaluate`` sub-command to ``voxelmorphreg``'s sub-parsers."""
    p = subparsers.add_parser(
        "evaluate",
        help="register every ordered pair of a labelled set with several methods; Dice, HD95, folding, time",
        description="Register every ordered pair of a labelled set with each method and compare them: Dice, HD95, folding, std log det J, seconds per pair.",
    )
    p.add_argument("--data", required=True, help="folder (NAME_norm + NAME_seg style pairs) or CSV with image,labels columns")
    p.add_argument("--out", required=True, help="output folder: results.csv, summary.csv, summary.json, boxplot.png")
    p.add_argument("--labels", help="JSON list of label IDs to evaluate (e.g. labels30.json); default: every label all subjects share")
    p.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated, any of {', '.join(METHODS)} (default: all)")
    p.add_argument("--model", default="bundled", help="model for the network methods: file, 'bundled' (default) or 'none'")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--refine", type=int, default=None, metavar="N", help=f"refinement iterations of network+refine (default: the model's own, as in register; {DEFAULT_REFINE} for a model whose default is 0)")
    p.add_argument("--refine-smoothness", type=float, default=None, metavar="W", help="smoothness weight of the refinement (default: the model's)")
    p.add_argument("--refine-learning-rate", type=float, default=None, metavar="LR", help="Adam step size of the refinement (default: the model's)")
    p.add_argument("--refine-coarse-fraction", type=float, default=None, metavar="F", help="share of the refinement iterations on the coarse grid (default: the model's)")
    p.add_argument("--max-pairs", type=int, default=None, metavar="N", help="evaluate only the first N ordered pairs")
    p.add_argument("--no-affine", action="store_true", help="no affine pre-alignment before the network methods (images already aligned)")
    p.add_argument("--quiet", action="store_true", help="no progress messages (the table is still printed)")
    return p


def run(args, log=print) -> dict:
    """Run ``evaluate`` from parsed arguments; print the table on stdout; return the summary."""
    options = EvaluationOptions(
        data=args.data,
        out=args.out,
        labels=args.labels,
        methods=parse_methods(args.methods),
        model=args.model,
        device=args.device,
        refine=args.refine,
        refine_smoothness=getattr(args, "refine_smoothness", None),
        refine_learning_rate=getattr(args, "refine_learning_rate", None),
        refine_coarse_fraction=getattr(args, "refine_coarse_fraction", None),
        max_pairs=args.max_pairs,
        affine=not getattr(args, "no_affine", False),
    )
    summary = evaluate(options, log)
    print(summary["table"], flush=True)
    return summary


def parse_methods(text) -> list[str]:
    from ..errors import VoxelMorphRegError

    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    methods = []
    for item in items:
        name = item.strip().lower()
        if not name:
            continue
        if name not in METHODS:
            raise VoxelMorphRegError(f"unknown method {item.strip()!r} in --methods; choose from {', '.join(METHODS)}")
        if name not in methods:
            methods.append(name)
    if not methods:
        raise VoxelMorphRegError(f"--methods is empty; choose from {', '.join(METHODS)}")
    return methods


# --------------------------------------------------------------------------- inputs


def read_label_ids(path) -> list[int]:
    """Label IDs from a JSON list (``[2, 3, 4]``) or a JSON object keyed by ID (``{"2": "name"}``)."""
    from ..errors import VoxelMorphRegError

    path = Path(path)
    if not path.is_file():
        raise VoxelMorphRegError(f"{path}: label file not found")
    try:
        data = json.loads(path.read_text())
        values = list(data.keys()) if isinstance(data, dict) else list(data)
        ids = sorted({int(v) for v in values} - {0})
    except (OSError, ValueError, TypeError) as exc:
        raise VoxelMorphRegError(f"{path}: not a JSON list of label IDs ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if not ids:
        raise VoxelMorphRegError(f"{path}: lists no label ID other than 0")
    return ids


def _unique_names(sources) -> list[str]:
    names, seen = [], {}
    for source in sources:
        name = source.name
        if name in seen:
            seen[name] += 1
            name = f"{name}#{seen[name]}"
        else:
            seen[name] = 1
        names.append(name)
    return names


@dataclass
class _Subject:
    name: str
    image: object  # sitk.Image float32
    labels: object  # sitk.Image int32 on the image's grid


class _SubjectStore:
    """Reads subjects on demand, keeping the few most recently used in memory."""

    def __init__(self, sources, names, keep: int = 4):
        self.sources = dict(zip(names, sources))
        self.keep = keep
        self.cache: dict[str, _Subject] = {}

    def get(self, name: str) -> _Subject:
        from ..image.io import read_labels, read_volume

        if name in self.cache:
            self.cache[name] = self.cache.pop(name)  # most recent last
            return self.cache[name]
        source = self.sources[name]
        image = read_volume(source.image, name=f"image of {name} ({source.image})")
        labels = read_labels(source.labels, reference=image, name=f"labels of {name} ({source.labels})")
        subject = _Subject(name, image, labels)
        self.cache[name] = subject
        while len(self.cache) > self.keep:
            self.cache.pop(next(iter(self.cache)))
        return subject


# --------------------------------------------------------------------------- the evaluation


def evaluate(options: EvaluationOptions, log=print) -> dict:
    """Register every ordered pair with every method; write the outputs; return the summary
    (``summary["table"]`` is the printed table)."""
    import numpy as np
    import SimpleITK as sitk

    from ..errors import VoxelMorphRegError
    from ..image.io import ensure_output_folder, write_bytes
    from . import surface_metrics
    from .label_metrics import dice_per_label
    from .training_sources import sources_from

    methods = parse_methods(options.methods)
    if options.max_pairs is not None and options.max_pairs < 1:
        raise VoxelMorphRegError(f"--max-pairs must be >= 1, got {options.max_pairs}")
    if "network+refine" in methods and options.refine is not None and options.refine < 1:
        raise VoxelMorphRegError(f"--refine must be >= 1 for network+refine, got {options.refine}")
    requested_labels = read_label_ids(options.labels) if options.labels else None

    sources = sources_from(options.data)
    usable = [s for s in sources if s.image and s.labels]
    if len(usable) < len(sources):
        log(f"note: {len(sources) - len(usable)} of {len(sources)} subjects in {options.data} lack an image or labels; left out")
    if len(usable) < 2:
        raise VoxelMorphRegError(f"{options.data}: evaluation needs at least 2 subjects with both an image and labels, found {len(usable)}")
    names = _unique_names(usable)
    pairs = [(f, m) for f in names for m in names if f != m]
    if options.max_pairs is not None:
        pairs = pairs[: options.max_pairs]
    involved = [n for n in names if any(n in pair for pair in pairs)]

    skipped: dict[str, str] = {}
    if "network+refine" not in methods and (options.refine_smoothness is not None or options.refine_learning_rate is not None or options.refine_coarse_fraction is not None):
        raise VoxelMorphRegError("--refine-smoothness and --refine-learning-rate apply to the network+refine method, which is not among --methods")
    context = {"ants": None, "network_methods": {}}
    if "ants" in methods:
        context["ants"], why = import_ants()
        if why:
            skipped["ants"] = why
    if "network" in methods and options.model == "none":
        skipped["network"] = "--model none: there is no network (network+refine optimises from zero)"
    for method, why in skipped.items():
        log(f"note: {method} skipped: {why}")
    active = [m for m in methods if m not in skipped]
    if not active:
        raise VoxelMorphRegError("no requested method can run: " + "; ".join(f"{m}: {w}" for m, w in skipped.items()))
    model_description = refinement = None
    if any(m.startswith("network") for m in active):
        # The model is read once, on its device, for every pair and both network methods; a missing
        # or broken model file, a bad refinement setting or a missing CUDA fail now, not after hours.
        context["network_methods"] = prepare_network_methods(options, active)
        loaded = next(iter(context["network_methods"].values()))[1]
        model_description = loaded.description
        if "network+refine" in context["network_methods"]:
            refinement = context["network_methods"]["network+refine"][1].refinement
        if loaded.device.type == "cuda":
            import torch

            torch.zeros(1, device=loaded.device)  # CUDA start-up outside the first pair's time

    out = ensure_output_folder(options.out)

    # Read (and check) every subject once; the label set to evaluate.
    store = _SubjectStore(usable, names)
    log(f"reading and checking {len(involved)} subjects")
    present: dict[str, set] = {}
    for name in involved:
        subject = store.get(name)
        present[name] = set(np.unique(sitk.GetArrayViewFromImage(subject.labels)).tolist()) - {0}
    if requested_labels is None:
        labels = sorted(set.intersection(*present.values()))
        if not labels:
            raise VoxelMorphRegError(f"{options.data}: the label maps share no label other than 0 (pass --labels)")
        label_note = "every label present in all evaluated subjects"
    else:
        anywhere = set.union(*present.values())
        missing = [label for label in requested_labels if label not in anywhere]
        labels = [label for label in requested_labels if label in anywhere]
        if not labels:
            raise VoxelMorphRegError(f"{options.labels}: none of its labels occurs in the label maps of {options.data}")
        if missing:
            log(f"note: labels {missing} of {options.labels} occur in no label map; left out")
        label_note = f"labels of {options.labels}" + (f" (absent from every map, left out: {missing})" if missing else "")

    log(f"evaluating {len(pairs)} ordered pairs of {len(involved)} subjects, {len(labels)} labels, methods: {', '.join(active)}")
    rows: list[dict] = []
    for number, (fixed_name, moving_name) in enumerate(pairs, start=1):
        fixed, moving = store.get(fixed_name), store.get(moving_name)
        fixed_array = sitk.GetArrayFromImage(fixed.labels)
        spacing_kji = fixed.labels.GetSpacing()[::-1]
        present_fixed = set(np.unique(fixed_array).tolist())
        log(f"[pair {number}/{len(pairs)}] moving {moving_name} -> fixed {fixed_name}")
        for method in active:
            started = time.perf_counter()
            warped_labels, stats = runner(method)(fixed, moving, context)
            seconds = time.perf_counter() - started
            warped = sitk.GetArrayFromImage(warped_labels)
            dice = dice_per_label(warped, fixed_array, labels)
            hd95 = surface_metrics.hd95_per_label(warped, fixed_array, labels, spacing_kji)
            present_after = set(np.unique(warped).tolist())
            row = {
                "fixed": fixed_name,
                "moving": moving_name,
                "method": method,
                "mean_dice": float(np.mean(list(dice.values()))) if dice else float("nan"),
                "hd95_mm": nanmean(hd95.values()),
                "folding_fraction": float(stats["folding_fraction"]),
                "std_log_jacobian": float(stats["std_log_jacobian"]),
                "seconds": seconds,
                "dice": dice,
                "hd95": hd95,
                # Labels in only one of the two maps (the method lost a structure, or made one up): HD95 is
                # undefined for them, so the mean HD95 leaves them out and this count says how many there were.
                "labels_lost": sorted(label for label in hd95 if (label in present_after) != (label in present_fixed)),
            }
            rows.append(row)
            extra = f" ({stats['note']})" if stats.get("note") else ""
            log(
                f"    {method:<15} Dice {row['mean_dice']:.4f}  HD95 {row['hd95_mm']:.2f} mm  folded {100 * row['folding_fraction']:.4f} %  "
                f"std log detJ {row['std_log_jacobian']:.3f}  {seconds:.1f} s{extra}"
            )
        write_bytes(results_csv(rows, labels), out / "results.csv")  # progress survives an interruption

    summary = summarise(rows, methods, skipped, labels)
    table = format_table(summary)
    write_bytes(summary_csv(summary, labels), out / "summary.csv")
    title = f"{len(pairs)} ordered pairs of {len(involved)} subjects, mean Dice over {len(labels)} labels"
    write_bytes(draw_boxplot(rows, methods, title), out / "boxplot.png")
    definitions = dict(DEFINITIONS, hd95_mm=surface_metrics.DEFINITION)
    report = {
        "command": "voxelmorphreg " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["evaluate"] else None,
        "options": asdict(options),
        "model": model_description,
        "subjects": involved,
        "pairs": [{"fixed": f, "moving": m} for f, m in pairs],
        "labels": labels,
        "label_selection": label_note,
        "methods": {method: method_json(values) for method, values in summary.items()},
        "refinement": refinement,
        "notes": [f"{m} skipped: {w}" for m, w in skipped.items()],
        "definitions": definitions,
        "versions": versions(context["ants"]),
    }
    write_bytes(json.dumps(report, indent=2, ensure_ascii=False).encode(), out / "summary.json")
    log(f"results in {out}: results.csv, summary.csv, summary.json, boxplot.png")
    return {**report, "table": table, "rows": rows, "summary": summary}
