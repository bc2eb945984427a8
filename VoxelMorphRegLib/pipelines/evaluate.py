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

Outputs in ``--out``: ``results.csv`` (one row per pair x method, rewritten after every
pair), ``summary.csv`` (one row per method), ``summary.json`` and ``boxplot.png``; the table
is printed on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

METHODS = ("none", "affine", "network", "network+refine", "ants")
DEFAULT_METHODS = ",".join(METHODS)
DEFAULT_REFINE = 50
ANTS_MISSING = 'antspyx is not installed (pip install "voxelmorphreg[bench]" or pip install antspyx)'
DEFINITIONS = {
    "dice": "2|A∩B| / (|A|+|B|) per label on the fixed grid (moving labels warped, nearest neighbour / ANTs genericLabel); mean over the evaluated labels present in either map",
    "hd95_mm": None,  # filled from surface_metrics.DEFINITION
    "folding_fraction": "fraction of fixed-grid voxels with det J <= 0, det(I + grad u) of the whole fixed-to-moving transform by central differences, unclipped field",
    "std_log_jacobian": "standard deviation of log det J over the fixed-grid voxels with det J > 0",
    "labels_lost": "number of (pair, label) cases where a label is in only one of the warped and fixed maps; their HD95 is undefined and left out of the HD95 means, so a method that loses structures is flagged here",
    "seconds": "wall-clock seconds of the method for one pair (affine, model loading, inference, refinement, warping the labels); reading files and computing metrics excluded",
}


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
        max_pairs=args.max_pairs,
        affine=not getattr(args, "no_affine", False),
    )
    summary = evaluate(options, log)
    print(summary["table"], flush=True)
    return summary


run_evaluation = run  # the name cli.py's _run_evaluate calls


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


# --------------------------------------------------------------------------- methods


def _import_ants():
    """``(ants module, None)`` or ``(None, why not)``."""
    try:
        import ants
    except ImportError:
        return None, ANTS_MISSING
    except OSError as exc:  # a broken binary wheel
        return None, f"antspyx cannot be loaded ({str(exc).splitlines()[0]})"
    return ants, None


def _identity_stats():
    return {"folding_fraction": 0.0, "std_log_jacobian": 0.0}


def _affine_stats(matrix) -> dict:
    """det J of an affine map is the constant det(A): no folding unless it reflects, no spread."""
    import numpy as np

    det = float(np.linalg.det(np.asarray(matrix, dtype=float).reshape(3, 3)))
    return {"folding_fraction": 1.0 if det <= 0 else 0.0, "std_log_jacobian": 0.0, "jacobian_determinant": round(det, 6)}


def _run_none(fixed, moving, context):
    from ..image.model_grid import resample_to

    return resample_to(moving.labels, fixed.labels, None, labels=True), _identity_stats()


def _run_affine(fixed, moving, context):
    from ..image.affine import affine_register
    from ..image.model_grid import resample_to

    transform = affine_register(fixed.image, moving.image)
    return resample_to(moving.labels, fixed.labels, transform, labels=True), _affine_stats(transform.GetMatrix())


def _refinement_of(options: EvaluationOptions) -> dict:
    """The refinement network+refine runs: the options where given, else the model's defaults
    (``register``'s own), with DEFAULT_REFINE iterations for a model whose default is none."""
    from ..pipelines.register import RegisterOptions, load_model, refinement_settings

    has_network = options.model != "none"
    _, config, description = load_model(options.model, None)
    settings = refinement_settings(
        RegisterOptions(refine_iterations=options.refine, refine_smoothness=options.refine_smoothness, refine_learning_rate=options.refine_learning_rate),
        config,
        has_network,
        description,
    )
    if options.refine is None and settings["iterations"] == 0:
        settings["iterations"] = DEFAULT_REFINE
    return {"refine": settings["iterations"], "refine_smoothness": settings["smoothness"], "refine_learning_rate": settings["learning_rate"]}


def _run_network(fixed, moving, context, refine: int):
    from ..pipelines.register import RegisterOptions, register_images

    options = RegisterOptions(model=context["model"], device=context["device"], affine=context["affine"], refine_iterations=refine, qc=False)
    if refine != 0:
        options.refine_smoothness = context["refine_smoothness"]
        options.refine_learning_rate = context["refine_learning_rate"]
    result = register_images(fixed.image, moving.image, options, moving_labels=moving.labels, log=lambda message: None)
    metrics = result.metrics
    stats = {"folding_fraction": metrics["folding_fraction"], "std_log_jacobian": metrics["std_log_jacobian"]}
    if metrics.get("fallback"):
        stats["note"] = metrics["fallback"]
    return result.warped_labels, stats


def _to_ants(ants, image):
    import numpy as np
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image).astype(np.float32).transpose(2, 1, 0)  # [k, j, i] -> [i, j, k]
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    return ants.from_numpy(np.ascontiguousarray(array), origin=list(image.GetOrigin()), spacing=list(image.GetSpacing()), direction=direction)


def _ants_warp_statistics(warp_path: str, affine_path: str | None, fixed_image) -> dict:
    """Folding and std log det J of ANTs' whole forward transform ``p -> A(W(p))`` on the fixed
    grid: det J = det(A) * det(I + grad w), w the SyN displacement (LPS mm, defined on the fixed
    domain), by the same finite differences as ``register``."""
    import numpy as np
    import SimpleITK as sitk
    import torch

    from ..image.displacement import physical_to_flow
    from ..image.io import same_grid
    from ..tensor.jacobian import folding_statistics, jacobian_determinant

    warp = sitk.ReadImage(warp_path)
    if not same_grid(warp, fixed_image):
        warp = sitk.Resample(warp, fixed_image, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkLinear, 0.0)
    field_xyz = sitk.GetArrayFromImage(warp).astype(np.float64)
    flow = torch.from_numpy(np.ascontiguousarray(physical_to_flow(field_xyz, fixed_image))).float()[None]
    det = jacobian_determinant(flow)[0]
    det_affine = 1.0
    if affine_path:
        det_affine = float(np.linalg.det(np.array(sitk.ReadTransform(affine_path).GetParameters()[:9]).reshape(3, 3)))
    stats = folding_statistics(det * det_affine)
    return {"folding_fraction": stats["folding_fraction"], "std_log_jacobian": stats["std_log_jacobian"]}


def _run_ants(fixed, moving, context):
    import numpy as np
    import SimpleITK as sitk

    from ..errors import VoxelMorphRegError

    ants = context["ants"]
    with tempfile.TemporaryDirectory(prefix="voxelmorphreg-ants-") as folder:
        try:
            fixed_a, moving_a = _to_ants(ants, fixed.image), _to_ants(ants, moving.image)
            registration = ants.registration(fixed_a, moving_a, type_of_transform="SyN", outprefix=str(Path(folder) / "pair_"))
            transforms = list(registration["fwdtransforms"])
            labels_a = _to_ants(ants, moving.labels)
            warped = ants.apply_transforms(fixed_a, labels_a, transformlist=transforms, interpolator="genericLabel")
        except Exception as exc:  # ANTs raises RuntimeError/ValueError with multi-line text
            first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise VoxelMorphRegError(f"ANTs SyN failed on {moving.name} -> {fixed.name} ({first[:200]})") from None
        array = np.rint(warped.numpy()).astype(np.int32).transpose(2, 1, 0)
        warped_labels = sitk.GetImageFromArray(np.ascontiguousarray(array))
        warped_labels.CopyInformation(fixed.labels)
        warp_path = next((t for t in transforms if t.endswith((".nii.gz", ".nii", ".nrrd", ".mha")) and "Inverse" not in Path(t).name), None)
        affine_path = next((t for t in transforms if t.endswith(".mat")), None)
        if warp_path is None:
            raise VoxelMorphRegError(f"ANTs SyN on {moving.name} -> {fixed.name} wrote no forward warp field ({transforms})")
        stats = _ants_warp_statistics(warp_path, affine_path, fixed.image)
    return warped_labels, stats


def _runner(method: str, context):
    if method == "none":
        return _run_none
    if method == "affine":
        return _run_affine
    if method == "network":
        return lambda f, m, c: _run_network(f, m, c, 0)
    if method == "network+refine":
        return lambda f, m, c: _run_network(f, m, c, context["refine"])
    return _run_ants


# --------------------------------------------------------------------------- statistics and outputs


def _nanmean(values) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def _nanstd(values) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if len(values) < 2:
        return float("nan")  # undefined for one pair
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _cell(value, digits: int = 6):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return round(value, digits)
    return value


def _json_number(value, digits: int = 6):
    if value is None or (isinstance(value, float) and (math.isnan(value) or math.isinf(value))):
        return None
    return round(float(value), digits)


def _csv_bytes(header: list[str], rows: list[list]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode()


def _results_csv(rows: list[dict], labels: list[int]) -> bytes:
    header = ["fixed", "moving", "method", "mean_dice", "hd95_mm", "folding_fraction", "std_log_jacobian", "seconds"]
    header += [f"dice_{label}" for label in labels] + [f"hd95_{label}" for label in labels]
    table = []
    for row in rows:
        line = [row["fixed"], row["moving"], row["method"], _cell(row["mean_dice"]), _cell(row["hd95_mm"], 4), _cell(row["folding_fraction"], 8), _cell(row["std_log_jacobian"]), _cell(row["seconds"], 3)]
        line += [_cell(row["dice"].get(label, float("nan"))) for label in labels]
        line += [_cell(row["hd95"].get(label, float("nan")), 4) for label in labels]
        table.append(line)
    return _csv_bytes(header, table)


def summarise(rows: list[dict], methods: list[str], skipped: dict, labels: list[int]) -> dict:
    """Per method: mean and std over pairs of each pair's numbers, and per-label means."""
    summary = {}
    for method in methods:
        if method in skipped:
            summary[method] = {"skipped": skipped[method]}
            continue
        mine = [r for r in rows if r["method"] == method]
        summary[method] = {
            "pairs": len(mine),
            "mean_dice": _nanmean(r["mean_dice"] for r in mine),
            "mean_dice_std": _nanstd(r["mean_dice"] for r in mine),
            "hd95_mm": _nanmean(r["hd95_mm"] for r in mine),
            "hd95_mm_std": _nanstd(r["hd95_mm"] for r in mine),
            "folding_percent": 100.0 * _nanmean(r["folding_fraction"] for r in mine),
            "std_log_jacobian": _nanmean(r["std_log_jacobian"] for r in mine),
            "seconds_per_pair": _nanmean(r["seconds"] for r in mine),
            "dice_per_label": {label: _nanmean(r["dice"].get(label, float("nan")) for r in mine) for label in labels},
            "hd95_per_label": {label: _nanmean(r["hd95"].get(label, float("nan")) for r in mine) for label in labels},
            "labels_lost": sum(len(r.get("labels_lost", [])) for r in mine),
        }
    return summary


def format_table(summary: dict) -> str:
    """Markdown table: method | mean Dice (mean ± std over pairs) | HD95 | folded % | std log detJ | s/pair."""
    header = ["method", "mean Dice", "HD95 (mm)", "folded %", "std log detJ", "s/pair", "pairs"]
    lines = []
    for method, values in summary.items():
        if "skipped" in values:
            lines.append([method, f"skipped: {values['skipped']}", "", "", "", "", "0"])
            continue

        def pm(mean, std, digits):
            if math.isnan(mean):
                return "n/a"
            return f"{mean:.{digits}f} ± " + ("n/a" if math.isnan(std) else f"{std:.{digits}f}")

        lines.append([
            method,
            pm(values["mean_dice"], values["mean_dice_std"], 3),
            pm(values["hd95_mm"], values["hd95_mm_std"], 2),
            "n/a" if math.isnan(values["folding_percent"]) else f"{values['folding_percent']:.4f}",
            "n/a" if math.isnan(values["std_log_jacobian"]) else f"{values['std_log_jacobian']:.3f}",
            f"{values['seconds_per_pair']:.2f}",
            str(values["pairs"]),
        ])
    widths = [max(len(header[c]), *(len(line[c]) for line in lines)) if lines else len(header[c]) for c in range(len(header))]

    def render(cells):
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + " |"

    notes = [
        f"note: {method} lost or invented {values['labels_lost']} label(s) over its pairs; HD95 leaves them out (see summary.json)"
        for method, values in summary.items() if values.get("labels_lost")
    ]
    return "\n".join([render(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(render(line) for line in lines), *notes])


def _summary_csv(summary: dict, labels: list[int]) -> bytes:
    header = ["method", "pairs", "mean_dice", "mean_dice_std", "hd95_mm", "hd95_mm_std", "folding_percent", "std_log_jacobian", "seconds_per_pair", "note"]
    header += [f"dice_{label}" for label in labels]
    table = []
    for method, values in summary.items():
        if "skipped" in values:
            table.append([method, 0] + [""] * 7 + [f"skipped: {values['skipped']}"] + [""] * len(labels))
            continue
        line = [method, values["pairs"]] + [_cell(values[k], 8 if k == "folding_percent" else 6) for k in ("mean_dice", "mean_dice_std", "hd95_mm", "hd95_mm_std", "folding_percent", "std_log_jacobian", "seconds_per_pair")]
        note = f"{values['labels_lost']} label(s) in one map only, left out of HD95" if values.get("labels_lost") else ""
        line += [note] + [_cell(values["dice_per_label"][label]) for label in labels]
        table.append(line)
    return _csv_bytes(header, table)


def draw_boxplot(rows: list[dict], methods: list[str], title: str) -> bytes:
    """PNG bytes: a box of the per-pair mean Dice for every method that ran, pairs as dots."""
    import numpy as np
    from matplotlib.figure import Figure

    ran = [m for m in methods if any(r["method"] == m for r in rows)]
    data = [[r["mean_dice"] for r in rows if r["method"] == m and not math.isnan(r["mean_dice"])] for m in ran]
    fig = Figure(figsize=(max(4.0, 1.4 * len(ran) + 1.5), 4.5), dpi=100)
    ax = fig.subplots()
    if ran:
        ax.boxplot(data, widths=0.5, showmeans=True, medianprops={"color": "tab:orange"}, meanprops={"marker": "^", "markerfacecolor": "tab:green", "markeredgecolor": "tab:green"})
        rng = np.random.default_rng(0)
        for position, values in enumerate(data, start=1):
            ax.scatter(position + rng.uniform(-0.12, 0.12, len(values)), values, s=12, color="tab:blue", alpha=0.6, zorder=3)
        ax.set_xticks(range(1, len(ran) + 1))
        ax.set_xticklabels(ran)
    ax.set_ylabel("mean Dice over labels (per pair)")
    top = max([1.0] + [max(v) for v in data if v])
    low = min([0.0] + [min(v) for v in data if v])
    ax.set_ylim(low, top + 0.02)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _method_json(values: dict) -> dict:
    if "skipped" in values:
        return dict(values)
    out = {"pairs": values["pairs"]}
    for key in ("mean_dice", "mean_dice_std", "hd95_mm", "hd95_mm_std", "folding_percent", "std_log_jacobian", "seconds_per_pair"):
        out[key] = _json_number(values[key], 8)
    out["dice_per_label"] = {str(k): _json_number(v) for k, v in values["dice_per_label"].items()}
    out["hd95_per_label"] = {str(k): _json_number(v, 4) for k, v in values["hd95_per_label"].items()}
    out["labels_lost"] = values.get("labels_lost", 0)
    return out


def _versions(ants) -> dict:
    versions = {}
    for name in ("torch", "monai", "SimpleITK", "numpy"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # pragma: no cover - only for the record
            pass
    if ants is not None:
        versions["antspyx"] = getattr(ants, "__version__", "unknown")
    return versions


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
    from .train import sources_from

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
    refinement = None
    if "network+refine" in methods:
        refinement = _refinement_of(options)
    elif options.refine_smoothness is not None or options.refine_learning_rate is not None:
        raise VoxelMorphRegError("--refine-smoothness and --refine-learning-rate apply to the network+refine method, which is not among --methods")
    context = {"model": options.model, "device": options.device, "affine": options.affine, "ants": None, **(refinement or {})}
    if "ants" in methods:
        context["ants"], why = _import_ants()
        if why:
            skipped["ants"] = why
    if "network" in methods and options.model == "none":
        skipped["network"] = "--model none: there is no network (network+refine optimises from zero)"
    for method, why in skipped.items():
        log(f"note: {method} skipped: {why}")
    active = [m for m in methods if m not in skipped]
    if not active:
        raise VoxelMorphRegError("no requested method can run: " + "; ".join(f"{m}: {w}" for m, w in skipped.items()))

    out = ensure_output_folder(options.out)
    model_description = None
    if any(m.startswith("network") for m in active):
        from ..checkpoint import load_checkpoint
        from .register import bundled_model_path, select_device

        device = select_device(options.device)  # fails now, not after hours, without CUDA
        if options.model != "none":
            path = bundled_model_path() if options.model in ("bundled", "") else Path(options.model)
            load_checkpoint(path)  # a missing or broken model file fails now
            model_description = str(path)
            context["model"] = str(path)
        else:
            model_description = "none (optimisation only)"
        if device.type == "cuda":
            import torch

            torch.zeros(1, device=device)  # CUDA start-up outside the first pair's time

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
            warped_labels, stats = _runner(method, context)(fixed, moving, context)
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
                "hd95_mm": _nanmean(hd95.values()),
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
        write_bytes(_results_csv(rows, labels), out / "results.csv")  # progress survives an interruption

    summary = summarise(rows, methods, skipped, labels)
    table = format_table(summary)
    write_bytes(_summary_csv(summary, labels), out / "summary.csv")
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
        "methods": {method: _method_json(values) for method, values in summary.items()},
        "refinement": None if refinement is None else {"iterations": refinement["refine"], "smoothness": refinement["refine_smoothness"], "learning_rate": refinement["refine_learning_rate"]},
        "notes": [f"{m} skipped: {w}" for m, w in skipped.items()],
        "definitions": definitions,
        "versions": _versions(context["ants"]),
    }
    write_bytes(json.dumps(report, indent=2, ensure_ascii=False).encode(), out / "summary.json")
    log(f"results in {out}: results.csv, summary.csv, summary.json, boxplot.png")
    return {**report, "table": table, "rows": rows, "summary": summary}
