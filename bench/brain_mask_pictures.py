"""The brain mask on every real scan of the shared clinical folder, in one picture (to judge by eye:
those scans have no reference masks).

    python bench/brain_mask_pictures.py --out bench/results/brain-mask-clinical-DATE.png [--model FILE]

One row per scan (whole-head T1 at 1 and 1.75 mm, with the neck at 1.6 mm, a T2 with 5.5 mm slices,
two contrast T1 with 6.5 mm slices and tumours): axial, coronal and sagittal planes through the
mask's centre, the mask outlined in cyan, with its volume and seconds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from VoxelMorphRegLib.pipelines.brain_mask import brain_mask  # noqa: E402

CLINICAL = ROOT.parent / "shared" / "data" / "clinical"
SCANS = ("brainchop_t1.nii.gz", "niivue_t1_head.nii.gz", "hippodeep_t1.nii.gz", "niivue_t1_head_neck.nii.gz", "torchio_fpg_t2.nii.gz",
         "pyradiomics_brain1_t1c.nrrd", "pyradiomics_brain2_t1c.nrrd")


def planes(image: sitk.Image, mask: sitk.Image):
    """Axial, coronal and sagittal planes (1 mm isotropic, LPS display) through the mask's centre."""
    oriented = sitk.DICOMOrient(image, "LPS")
    mask = sitk.DICOMOrient(mask, "LPS")
    spacing = [1.0, 1.0, 1.0]
    size = [int(round(n * s)) for n, s in zip(oriented.GetSize(), oriented.GetSpacing())]
    reference = sitk.Image(size, sitk.sitkFloat32)
    reference.SetOrigin(oriented.GetOrigin())
    reference.SetSpacing(spacing)
    image_1mm = sitk.GetArrayFromImage(sitk.Resample(oriented, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    mask_1mm = sitk.GetArrayFromImage(sitk.Resample(mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
    k, j, i = (int(round(v.mean())) for v in np.nonzero(mask_1mm)) if mask_1mm.any() else (n // 2 for n in mask_1mm.shape)
    cuts = [(image_1mm[k], mask_1mm[k]), (image_1mm[:, j][::-1], mask_1mm[:, j][::-1]), (image_1mm[:, :, i][::-1], mask_1mm[:, :, i][::-1])]
    low, high = np.percentile(image_1mm[::2, ::2, ::2], [1, 99.5])
    return [(np.clip((a - low) / max(high - low, 1e-6), 0, 1), m) for a, m in cuts]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default=None)
    args = parser.parse_args(argv)
    if not CLINICAL.is_dir():
        print(f"brain_mask_pictures: {CLINICAL} not found", file=sys.stderr)
        return 2
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3 * len(SCANS)), facecolor="black")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(SCANS), 3)
    for row, name in enumerate(SCANS):
        image = sitk.ReadImage(str(CLINICAL / name), sitk.sitkFloat32)
        result = brain_mask(image, "network", args.model)
        print(f"{name}: {result.volume_ml:.0f} mL in {result.seconds:.2f} s", flush=True)
        for col, (picture, outline) in enumerate(planes(image, result.mask)):
            ax = axes[row, col]
            ax.imshow(picture, cmap="gray", vmin=0, vmax=1, interpolation="bilinear")
            if outline.any():
                ax.contour(outline, levels=[0.5], colors="cyan", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
        spacing = "x".join(f"{s:.2g}" for s in image.GetSpacing())
        axes[row, 0].set_title(f"{name}  ({spacing} mm): {result.volume_ml:.0f} mL, {result.seconds:.1f} s", color="white", fontsize=9, loc="left")
    fig.tight_layout()
    fig.savefig(args.out, dpi=70, facecolor="black")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
