"""``voxelmorphreg demo``: the whole pipeline offline on a built-in sample with a known deformation.

The fixed image is the MNI ICBM152 2009a T1 template shipped inside nilearn (no download);
the moving image is made from it by the project's own synthesis (random smooth
diffeomorphism, gamma, bias field, noise). ``register`` runs on the pair as on any other, and
its fixed-to-moving field is then compared with the known one inside the brain mask.

Layout of ``out``::

    inputs/fixed.nii.gz, inputs/moving.nii.gz      the pair handed to register
    inputs/true_displacement.nii.gz                the known fixed-to-moving field (LPS mm)
    inputs/brain_mask.nii.gz                       where the errors are measured
    inputs/NOTICE-MNI152.txt                       the template's copyright notice
    (everything register writes: warped.nii.gz, displacement.nii.gz, metrics.json, qc.png ...)

``metrics.json`` gains a ``demo`` section: ``true_displacement_mm`` (|truth|),
``error_before_mm`` (error of doing nothing: |truth| again, with its median) and ``error_mm``
(|estimated - truth|), each ``{mean, median, p95, max}`` in mm over the brain mask.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import SimpleITK as sitk

from ..errors import VoxelMorphRegError
from ..image.io import ensure_output_folder, write_bytes, write_image
from ..image.sample_data import TEMPLATE_NAME, load_template, notice_text, template_path
from ..image.synthetic_pair import displacement_error, displacement_magnitude, make_synthetic_pair


def _rounded(stats: dict, digits: int = 3) -> dict:
    return {key: round(value, digits) for key, value in stats.items()}


def prepare_inputs(out, seed: int = 0, max_displacement_mm: float = 6.0, sample_spacing: float | None = None, log=print) -> dict:
    """Write the sample pair into ``out/inputs`` and return paths, images and settings."""
    inputs = ensure_output_folder(Path(out) / "inputs")
    log(f"demo: loading the sample brain ({TEMPLATE_NAME})")
    fixed, mask = load_template(spacing=sample_spacing)
    log(f"demo: making the moving image (seed {seed}, random smooth deformation up to {max_displacement_mm:g} mm, gamma, bias field, noise)")
    pair = make_synthetic_pair(fixed, mask, seed=seed, max_displacement_mm=max_displacement_mm)
    images = {
        "fixed": fixed,
        "moving": pair.moving,
        # float32 (as register writes its fields): half the bytes and the gzip time of float64
        "true_displacement": sitk.Cast(pair.truth, sitk.sitkVectorFloat32),
        "brain_mask": mask,
    }
    # side by side (ITK's writers release the GIL): the field's gzip takes as long as the other three
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(write_image, image, inputs / f"{name}.nii.gz") for name, image in images.items()}
        paths = {name: future.result() for name, future in futures.items()}
    write_bytes(notice_text().encode("utf-8"), inputs / "NOTICE-MNI152.txt")
    return {"paths": paths, "fixed": fixed, "mask": mask, "truth": pair.truth, "synthesis": pair.info}


def run_demo(out, model: str = "bundled", device: str = "auto", seed: int = 0, log=print, *, refine: int | None = None, max_displacement_mm: float = 6.0, sample_spacing: float | None = None) -> dict:
    """Run the demo into ``out``; return the metrics (as written to metrics.json, with ``demo``).

    ``refine``: the refinement iterations (``None``: what a user gets by default, the model's own;
    0: the network alone)."""
    started = time.perf_counter()
    out = ensure_output_folder(out)
    prepared = prepare_inputs(out, seed, max_displacement_mm, sample_spacing, log)
    paths = prepared["paths"]

    from .register import RegisterOptions, register_files

    options = RegisterOptions(model=model, device=device, affine=True, refine_iterations=refine, integration_steps=None, qc=True)
    result = register_files(paths["fixed"], paths["moving"], out, options, log=log)

    estimated_path = out / "displacement.nii.gz"
    try:
        estimated = sitk.ReadImage(str(estimated_path))
    except RuntimeError:
        raise VoxelMorphRegError(f"{estimated_path}: register wrote no readable displacement field") from None
    truth, mask = prepared["truth"], prepared["mask"]
    error = displacement_error(estimated, truth, mask)
    before = displacement_magnitude(truth, mask)

    metrics = dict(getattr(result, "metrics", None) or {})
    if not metrics and (out / "metrics.json").is_file():
        metrics = json.loads((out / "metrics.json").read_text())
    metrics["demo"] = {
        "sample": TEMPLATE_NAME,
        "sample_file": str(template_path()),
        "seed": int(seed),
        "synthesis": {key: value for key, value in prepared["synthesis"].items() if key != "true_displacement_mm"},
        "mask_voxels": int(sitk.GetArrayViewFromImage(mask).astype(bool).sum()),
        "true_displacement_mm": _rounded(before),
        "error_before_mm": _rounded(before),
        "error_mm": _rounded(error),
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_bytes(json.dumps(metrics, indent=2).encode(), out / "metrics.json")

    log(f"demo: true displacement inside the brain: mean {before['mean']:.2f} mm, 95th percentile {before['p95']:.2f} mm, max {before['max']:.2f} mm")
    log(f"demo: registration error against it: mean {error['mean']:.2f} mm, 95th percentile {error['p95']:.2f} mm, max {error['max']:.2f} mm (before registration: mean {before['mean']:.2f} mm)")
    log(f"demo: results in {out}")
    return metrics
