"""What ``evaluate`` reports: per-pair rows, per-method statistics, the printed table and the files
(results.csv, summary.csv, summary.json's method entries, boxplot.png)."""

from __future__ import annotations

import csv
import io
import math

import numpy as np

DEFINITIONS = {
    "dice": "2|A∩B| / (|A|+|B|) per label on the fixed grid (moving labels warped, nearest neighbour / ANTs genericLabel); mean over the evaluated labels present in either map",
    "hd95_mm": None,  # filled from surface_metrics.DEFINITION
    "folding_fraction": "fraction of fixed-grid voxels with det J <= 0, det(I + grad u) of the whole fixed-to-moving transform by central differences, unclipped field",
    "std_log_jacobian": "standard deviation of log det J over the fixed-grid voxels with det J > 0",
    "labels_lost": "number of (pair, label) cases where a label is in only one of the warped and fixed maps; their HD95 is undefined and left out of the HD95 means, so a method that loses structures is flagged here",
    "seconds": "wall-clock seconds of the method for one pair (affine, inference, refinement, warping the labels); the model is loaded once before the pairs; reading files and computing metrics excluded",
}


def _values(values) -> np.ndarray:
    return np.array([math.nan if v is None else float(v) for v in values], dtype=float)


def nanmean(values) -> float:
    """Mean of the values that are not None/NaN; NaN when there are none."""
    array = _values(values)
    return float(np.nanmean(array)) if (~np.isnan(array)).any() else math.nan


def nanstd(values) -> float:
    """Sample standard deviation (n - 1) of the values that are not None/NaN; NaN for fewer than two."""
    array = _values(values)
    return float(np.nanstd(array, ddof=1)) if (~np.isnan(array)).sum() >= 2 else math.nan


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


def results_csv(rows: list[dict], labels: list[int]) -> bytes:
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
            "mean_dice": nanmean(r["mean_dice"] for r in mine),
            "mean_dice_std": nanstd(r["mean_dice"] for r in mine),
            "hd95_mm": nanmean(r["hd95_mm"] for r in mine),
            "hd95_mm_std": nanstd(r["hd95_mm"] for r in mine),
            "folding_percent": 100.0 * nanmean(r["folding_fraction"] for r in mine),
            "std_log_jacobian": nanmean(r["std_log_jacobian"] for r in mine),
            "seconds_per_pair": nanmean(r["seconds"] for r in mine),
            "dice_per_label": {label: nanmean(r["dice"].get(label, float("nan")) for r in mine) for label in labels},
            "hd95_per_label": {label: nanmean(r["hd95"].get(label, float("nan")) for r in mine) for label in labels},
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


def summary_csv(summary: dict, labels: list[int]) -> bytes:
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


def method_json(values: dict) -> dict:
    if "skipped" in values:
        return dict(values)
    out = {"pairs": values["pairs"]}
    for key in ("mean_dice", "mean_dice_std", "hd95_mm", "hd95_mm_std", "folding_percent", "std_log_jacobian", "seconds_per_pair"):
        out[key] = _json_number(values[key], 8)
    out["dice_per_label"] = {str(k): _json_number(v) for k, v in values["dice_per_label"].items()}
    out["hd95_per_label"] = {str(k): _json_number(v, 4) for k, v in values["hd95_per_label"].items()}
    out["labels_lost"] = values.get("labels_lost", 0)
    return out


def versions(ants) -> dict:
    versions = {}
    for name in ("torch", "monai", "SimpleITK", "numpy"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # pragma: no cover - only for the record
            pass
    if ants is not None:
        versions["antspyx"] = getattr(ants, "__version__", "unknown")
    return versions
