"""Whole-head scans: the brain mask's accuracy and speed, and whole-head registration against the
same brains given stripped and cropped (issue: scans as Slicer users load them).

    python bench/whole_head_eval.py --out bench/results/whole-head-DATE [--model MASK.pt] [--part masks|register|all]

Data: the held-out whole-head label maps 19 and 20 of ../shared/data/label_maps, rendered at 1 mm
(256^3) with a fixed seed as T1, T2, FLAIR, PD and T1 with 5 mm slices. The brain is every label
1-99 (structures and the CSF inside the skull), as in training.

- masks: Dice of the predicted mask against the label map's brain for each rendering, and the
  seconds of `brain_mask` on a 256^3 head (median of 3 after one warm-up).
- register: maps 19 -> 20 and 20 -> 19 as whole heads (T1 onto T1, and T2 onto T1) with the
  default settings (--brain-mask auto), against the same brains stripped (label map's brain) and
  cropped to the brain's box + 8 mm; Dice over the brain structures both maps share, seconds
  (register_files' seconds.total, no QC), and the focus's report.
- real: the real whole-head T1 with GM/WM labels (clinical/brainchop_t1) paired both ways with the
  three labelled, skull-stripped aseg subjects (their cortex 3/42 as GM, cerebral white matter 2/41
  as WM): GM/WM Dice with --brain-mask auto against off (what the brain focus is worth on real heads).
- contrast: one anatomy (map 19) rendered twice, as T1 and as T1 / T2 / FLAIR / PD with other noise
  (the truth is no deformation): std of log det J inside the brain and the mean displacement (mm)
  inside the brain, for the network alone (--refine 0) and the default.
Writes results.json and results.md into --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from VoxelMorphRegLib.contract import RegisterOptions  # noqa: E402
from VoxelMorphRegLib.freesurfer_labels import BRAIN_LABELS, T1_INTENSITY  # noqa: E402
from VoxelMorphRegLib.pipelines.brain_mask import brain_mask  # noqa: E402
from VoxelMorphRegLib.tensor.head_synthesis import contrast_table  # noqa: E402
from VoxelMorphRegLib.tensor.synthesis import bias_field, gaussian_blur  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "label_maps"
MAPS = ("19", "20")


def read_map(name: str) -> sitk.Image:
    image = sitk.ReadImage(str(DATA / f"synthseg_training_seg_{name}.nii.gz"))
    return sitk.Cast(image, sitk.sitkInt16)


def brain_of(labels: np.ndarray) -> np.ndarray:
    return (labels > 0) & (labels < 100)


def render(labels_image: sitk.Image, contrast: str, seed: int, thick_mm: int = 0) -> sitk.Image:
    """A 1 mm whole-head image of ``contrast`` ("t1", "t2", "flair", "pd"): brain labels near the
    contrast's tissue values, every other label a fixed random value, blur, bias, noise; optionally
    ``thick_mm`` slices along the image's third axis (averaged, then linearly brought back)."""
    labels = torch.from_numpy(sitk.GetArrayFromImage(labels_image).astype(np.int64))
    generator = torch.Generator().manual_seed(seed)
    table_t1 = torch.full((1024,), float("nan"))
    for label, value in T1_INTENSITY.items():
        table_t1[label] = value
    values = torch.rand(1024, generator=generator) * 0.9 + 0.05
    known = ~torch.isnan(table_t1)
    values = torch.where(known, contrast_table(torch.nan_to_num(table_t1, nan=0.6), contrast), values)
    values[0] = 0.02
    image = values[labels][None, None].float()
    image = image + 0.02 * torch.randn(image.shape, generator=generator)
    image = gaussian_blur(image, 0.6)
    image = image * bias_field(image.shape[2:], 0.2, 64.0, generator)
    image = (image + 0.01 * torch.randn(image.shape, generator=generator)).clamp_min(0)
    if thick_mm:
        pooled = torch.nn.functional.avg_pool3d(image, (thick_mm, 1, 1), (thick_mm, 1, 1), ceil_mode=True)
        image = torch.nn.functional.interpolate(pooled, size=image.shape[2:], mode="trilinear", align_corners=False)
    out = sitk.GetImageFromArray((image[0, 0].numpy() * 1000).astype(np.float32))
    out.CopyInformation(labels_image)
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b)))


def part_masks(model, out: dict):
    rows = []
    for index, name in enumerate(MAPS):
        labels = read_map(name)
        truth = brain_of(sitk.GetArrayViewFromImage(labels))
        for contrast, thick in (("t1", 0), ("t2", 0), ("flair", 0), ("pd", 0), ("t1", 5), ("t2", 5)):
            image = render(labels, contrast, 1000 + 10 * index, thick)
            result = brain_mask(image, "network", model)
            score = dice(sitk.GetArrayViewFromImage(result.mask) > 0, truth)
            rows.append({"map": name, "contrast": contrast + (f" {thick} mm slices" if thick else ""), "dice": round(score, 4), "volume_ml": round(result.volume_ml, 1), "truth_ml": round(truth.sum() / 1000, 1)})
            print(rows[-1], flush=True)
    image = render(read_map(MAPS[0]), "t1", 7)
    brain_mask(image, "network", model)  # warm-up: the model file's loading
    seconds = []
    for _ in range(3):
        started = time.perf_counter()
        brain_mask(image, "network", model)
        seconds.append(time.perf_counter() - started)
    out["masks"] = rows
    out["mask_seconds_256"] = {"median": round(statistics.median(seconds), 3), "all": [round(s, 3) for s in seconds]}
    print("mask seconds", out["mask_seconds_256"], flush=True)


def _stripped_cropped(image: sitk.Image, labels: sitk.Image, margin: int = 8):
    brain = brain_of(sitk.GetArrayViewFromImage(labels))
    array = np.where(brain, sitk.GetArrayViewFromImage(image), 0).astype(np.float32)
    stripped = sitk.GetImageFromArray(array)
    stripped.CopyInformation(image)
    k, j, i = np.nonzero(brain)
    low = [max(0, int(v.min()) - margin) for v in (i, j, k)]
    high = [min(n, int(v.max()) + 1 + margin) for v, n in zip((i, j, k), image.GetSize())]
    size = [h - lo for lo, h in zip(low, high)]
    return sitk.RegionOfInterest(stripped, size, low), sitk.RegionOfInterest(labels, size, low)


def _register(fixed, moving, fixed_labels, moving_labels, model, mode: str, scored=BRAIN_LABELS) -> dict:
    from VoxelMorphRegLib.pipelines.register import register_images

    options = RegisterOptions(qc=False, brain_mask=mode, brain_mask_model=model)
    result = register_images(fixed, moving, options, moving_labels, fixed_labels, log=lambda *_: None)
    metrics = result.metrics
    shared = sorted(set(scored) & set(np.unique(sitk.GetArrayViewFromImage(fixed_labels)).tolist()) & set(np.unique(sitk.GetArrayViewFromImage(moving_labels)).tolist()))
    warped = sitk.GetArrayViewFromImage(result.warped_labels)
    reference = sitk.GetArrayViewFromImage(fixed_labels)
    scores = [dice(warped == label, reference == label) for label in shared]
    return {"dice": round(float(np.mean(scores)), 4), "seconds": metrics["seconds"]["total"], "stages": metrics["seconds"], "model_grid": metrics["model_grid"]["size"],
            "brain_mask": metrics.get("brain_mask"), "std_log_jacobian": round(metrics["std_log_jacobian"], 4), "folding_fraction": metrics["folding_fraction"]}


def part_register(model, out: dict):
    labels = {name: read_map(name) for name in MAPS}
    t1 = {name: render(labels[name], "t1", 2000 + i) for i, name in enumerate(MAPS)}
    t2 = {name: render(labels[name], "t2", 3000 + i) for i, name in enumerate(MAPS)}
    rows = []
    for fixed, moving in ((MAPS[0], MAPS[1]), (MAPS[1], MAPS[0])):
        whole = _register(t1[fixed], t1[moving], labels[fixed], labels[moving], model, "auto")
        fixed_s, fixed_l = _stripped_cropped(t1[fixed], labels[fixed])
        moving_s, moving_l = _stripped_cropped(t1[moving], labels[moving])
        stripped = _register(fixed_s, moving_s, fixed_l, moving_l, model, "auto")
        off = _register(t1[fixed], t1[moving], labels[fixed], labels[moving], model, "off")
        cross = _register(t1[fixed], t2[moving], labels[fixed], labels[moving], model, "auto")
        rows.append({"pair": f"{moving} -> {fixed}", "whole_head_auto": whole, "stripped_cropped": stripped, "whole_head_off": off, "t2_onto_t1_auto": cross})
        print(json.dumps({k: (v if isinstance(v, str) else {"dice": v["dice"], "seconds": v["seconds"]}) for k, v in rows[-1].items()}), flush=True)
    out["register"] = rows


def _gm_wm(labels: sitk.Image, aseg: bool) -> sitk.Image:
    array = sitk.GetArrayFromImage(labels)
    out = np.zeros(array.shape, np.int16)
    if aseg:
        out[np.isin(array, (3, 42))] = 1
        out[np.isin(array, (2, 41))] = 2
    else:
        out[array == 1], out[array == 2] = 1, 2
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(labels)
    return image


def part_real(model, out: dict):
    root = DATA.parent
    head = sitk.ReadImage(str(root / "clinical" / "brainchop_t1.nii.gz"), sitk.sitkFloat32)
    head_labels = _gm_wm(sitk.ReadImage(str(root / "clinical" / "brainchop_gm_wm.nii.gz")), aseg=False)
    rows = []
    for subject in ("subj01", "subj02", "subj03"):
        brain = sitk.ReadImage(str(root / "aseg" / f"{subject}_norm.nii.gz"), sitk.sitkFloat32)
        brain_labels = _gm_wm(sitk.ReadImage(str(root / "aseg" / f"{subject}_seg.nii.gz")), aseg=True)
        for name, fixed, moving, fixed_labels, moving_labels in ((f"{subject} -> head", head, brain, head_labels, brain_labels), (f"head -> {subject}", brain, head, brain_labels, head_labels)):
            row = {"pair": name}
            for mode in ("auto", "off"):
                row[mode] = _register(fixed, moving, fixed_labels, moving_labels, model, mode, scored=(1, 2))
            rows.append(row)
            print(json.dumps({"pair": name, "auto": row["auto"]["dice"], "off": row["off"]["dice"], "seconds": [row["auto"]["seconds"], row["off"]["seconds"]]}), flush=True)
    out["real"] = rows


def part_contrast(model, out: dict):
    from VoxelMorphRegLib.pipelines.register import register_images

    labels = read_map(MAPS[0])
    brain = brain_of(sitk.GetArrayViewFromImage(labels))
    fixed = render(labels, "t1", 4000)
    rows = []
    for contrast in ("t1", "t2", "flair", "pd"):
        moving = render(labels, contrast, 4001)
        for refine in (0, None):
            options = RegisterOptions(qc=False, inverse=False, refine_iterations=refine, brain_mask_model=model)
            result = register_images(fixed, moving, options, log=lambda *_: None)
            field = sitk.GetArrayViewFromImage(result.displacement)
            magnitude = np.linalg.norm(field[brain], axis=-1)
            rows.append({"moving": contrast, "refine": "network alone" if refine == 0 else "default", "std_log_jacobian": round(result.metrics["std_log_jacobian"], 4),
                         "mean_displacement_mm": round(float(magnitude.mean()), 3), "p95_displacement_mm": round(float(np.percentile(magnitude, 95)), 3)})
            print(rows[-1], flush=True)
    out["contrast"] = rows


def write_report(out: dict, folder: Path):
    lines = ["# Whole-head evaluation", "", f"Command: `{out['command']}`", ""]
    if "masks" in out:
        lines += ["## Brain mask Dice (maps 19-20 rendered at 1 mm)", "", "| map | contrast | Dice | volume mL | truth mL |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['map']} | {r['contrast']} | {r['dice']:.4f} | {r['volume_ml']} | {r['truth_ml']} |" for r in out["masks"]]
        lines += ["", f"Seconds for a 256^3 head: median {out['mask_seconds_256']['median']} of {out['mask_seconds_256']['all']}", ""]
    if "register" in out:
        lines += ["## Registration (Dice over shared brain structures; seconds = register's total, no QC)", "", "| pair | whole head auto | whole head off | stripped + cropped | T2 onto T1 auto |", "| --- | --- | --- | --- | --- |"]
        for r in out["register"]:
            cells = [f"{r[k]['dice']:.4f} ({r[k]['seconds']:.1f} s)" for k in ("whole_head_auto", "whole_head_off", "stripped_cropped", "t2_onto_t1_auto")]
            lines.append(f"| {r['pair']} | " + " | ".join(cells) + " |")
    if "real" in out:
        lines += ["", "## Real whole-head T1 (brainchop) with the aseg subjects, GM/WM Dice", "", "| pair | --brain-mask auto | off |", "| --- | --- | --- |"]
        lines += [f"| {r['pair']} | {r['auto']['dice']:.4f} ({r['auto']['seconds']:.1f} s) | {r['off']['dice']:.4f} ({r['off']['seconds']:.1f} s) |" for r in out["real"]]
        lines.append(f"| mean | {np.mean([r['auto']['dice'] for r in out['real']]):.4f} | {np.mean([r['off']['dice'] for r in out['real']]):.4f} |")
    if "contrast" in out:
        lines += ["", "## One anatomy in two renderings (truth: no deformation), inside the brain", "", "| moving | run | std log det J | mean displacement mm | p95 mm |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['moving']} | {r['refine']} | {r['std_log_jacobian']} | {r['mean_displacement_mm']} | {r['p95_displacement_mm']} |" for r in out["contrast"]]
    (folder / "results.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default=None, help="brain mask model file (default: the bundled one)")
    parser.add_argument("--part", default="all", choices=("masks", "register", "real", "contrast", "all"))
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"whole_head_eval: {DATA} not found (the shared label maps are needed)", file=sys.stderr)
        return 2
    torch.set_num_threads(2)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    out = {"command": "python bench/whole_head_eval.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if args.part in ("masks", "all"):
        part_masks(args.model, out)
    if args.part in ("register", "all"):
        part_register(args.model, out)
    if args.part in ("real", "all"):
        part_real(args.model, out)
    if args.part in ("contrast", "all"):
        part_contrast(args.model, out)
    (folder / "results.json").write_text(json.dumps(out, indent=1))
    write_report(out, folder)
    print(f"wrote {folder / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
