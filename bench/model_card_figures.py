"""Figures of a model card that `evaluate` and `demo` do not give: an identical pair, and whole-head
against skull-stripped synthetic pairs.

    python bench/model_card_figures.py --model Resources/Models/voxelmorphreg_v2.pt [--json out.json]

- **Identical pair**: ``register_images`` of ``aseg/subj01`` onto itself with the network alone
  (affine pre-alignment on, as by default; ``--refine 0``) and with the model's default
  refinement; the mean and 95th percentile of |displacement| over the brain (voxels > 0). A
  registration should leave an identical pair where it is.
- **Synthetic pairs of the held-out label maps 19 and 20**, rendered with the T1-like
  intensities (the training's validation rendering, see pipelines/training_data.py) with
  ``--seeds`` random deformations each, skull-stripped and whole-head: the network alone
  (no affine: the maps are already aligned to the atlas), mean Dice over the brain structures
  of labels30.json. The two figures should be close: the model was trained on both.

Needs ``../shared/data`` beside the repository; exits 0 with a message without it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"


def identical_pair(model_spec: str) -> dict:
    import numpy as np
    import SimpleITK as sitk

    from VoxelMorphRegLib.contract import RegisterOptions
    from VoxelMorphRegLib.pipelines.loaded_model import load_model
    from VoxelMorphRegLib.pipelines.register import register_images

    image = sitk.ReadImage(str(DATA / "aseg" / "subj01_norm.nii.gz"), sitk.sitkFloat32)
    brain = sitk.GetArrayFromImage(image) > 0
    out = {}
    for name, refine in (("network alone", 0), ("default", None)):
        options = RegisterOptions(model=model_spec, refine_iterations=refine, qc=False)
        started = time.perf_counter()
        result = register_images(image, image, options, log=lambda m: None, model=load_model(options))
        length = np.linalg.norm(sitk.GetArrayFromImage(result.displacement), axis=-1)[brain]
        out[name] = {"mean_mm": round(float(length.mean()), 3), "p95_mm": round(float(np.percentile(length, 95)), 3), "seconds": round(time.perf_counter() - started, 1)}
    return out


def synthetic_pairs(model_spec: str, seeds: int) -> dict:
    import numpy as np
    import torch

    from VoxelMorphRegLib.freesurfer_labels import BRAIN_LABELS
    from VoxelMorphRegLib.model_resolution import resolve_model_path
    from VoxelMorphRegLib.checkpoint import load_checkpoint
    from VoxelMorphRegLib.pipelines.label_metrics import dice_per_label
    from VoxelMorphRegLib.pipelines.training_data import prepare_all, validation_pairs
    from VoxelMorphRegLib.pipelines.training_sources import SubjectSource
    from VoxelMorphRegLib.tensor.warping import warp_labels

    network, config, _ = load_checkpoint(resolve_model_path(model_spec))
    labels30 = json.loads((DATA / "aseg" / "labels30.json").read_text())
    restrict = [v for v in labels30 if v in BRAIN_LABELS]
    sources = [SubjectSource(f"map{n}", None, str(DATA / "label_maps" / f"synthseg_training_seg_{n}.nii.gz")) for n in (19, 20)]
    atlas = DATA / "unlabeled" / "conditional_lapirn_image_A_fullsize.nii.gz"
    subjects = prepare_all(sources, atlas, config, ROOT / "work_cache" / "card", False, True, log=lambda m: None)
    scores: dict = {}
    with torch.no_grad():
        for seed in range(seeds):
            for pair in validation_pairs(subjects, seed=100 + seed):
                (_, m_img, m_lab), (_, f_img, f_lab) = pair["moving"], pair["fixed"]
                flow = network(m_img, f_img).flow
                warped = warp_labels(m_lab, flow).numpy()[0, 0]
                before = dice_per_label(m_lab.numpy()[0, 0], f_lab.numpy()[0, 0], restrict)
                after = dice_per_label(warped, f_lab.numpy()[0, 0], restrict)
                entry = scores.setdefault(pair["variant"], {"before": [], "after": []})
                entry["before"].append(float(np.mean(list(before.values()))))
                entry["after"].append(float(np.mean(list(after.values()))))
    return {variant: {"pairs": len(v["after"]), "dice_before": round(float(np.mean(v["before"])), 4), "dice_network": round(float(np.mean(v["after"])), 4)} for variant, v in scores.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--seeds", type=int, default=4, help="random deformations per validation pair")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    if not (DATA / "aseg").is_dir():
        print(f"skipped: {DATA} not found (only on the development machines)")
        return 0
    figures = {"model": args.model, "identical_pair": identical_pair(args.model), "synthetic_maps_19_20": synthetic_pairs(args.model, args.seeds)}
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
