"""The methods ``evaluate`` compares: each maps a (fixed, moving) subject pair to the moving labels
on the fixed grid and the Jacobian statistics of its transform.

``none`` and ``affine`` need nothing; ``network`` and ``network+refine`` share one
:class:`~.loaded_model.LoadedModel` (the checkpoint is read once for every pair and method); ``ants``
needs the optional ``antspyx`` package.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..contract import RegisterOptions
from ..errors import VoxelMorphRegError

METHODS = ("none", "affine", "network", "network+refine", "ants")
DEFAULT_REFINE = 50  # network+refine iterations for a model whose own default is no refinement
ANTS_MISSING = 'antspyx is not installed (pip install "voxelmorphreg[bench]" or pip install antspyx)'


def import_ants():
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
    det = float(np.linalg.det(np.asarray(matrix, dtype=float).reshape(3, 3)))
    return {"folding_fraction": 1.0 if det <= 0 else 0.0, "std_log_jacobian": 0.0, "jacobian_determinant": round(det, 6)}


def run_none(fixed, moving, context):
    from ..image.model_grid import resample_to

    return resample_to(moving.labels, fixed.labels, None, labels=True), _identity_stats()


def run_affine(fixed, moving, context):
    from ..image.affine import affine_register
    from ..image.model_grid import resample_to

    transform = affine_register(fixed.image, moving.image)
    return resample_to(moving.labels, fixed.labels, transform, labels=True), _affine_stats(transform.GetMatrix())


def network_options(evaluation, refine: int) -> RegisterOptions:
    """What ``register`` would be asked for this method: the refinement options only with refinement."""
    options = RegisterOptions(model=evaluation.model, device=evaluation.device, affine=evaluation.affine, refine_iterations=refine, qc=False)
    if refine != 0:
        options.refine_smoothness = evaluation.refine_smoothness
        options.refine_learning_rate = evaluation.refine_learning_rate
        options.refine_coarse_fraction = evaluation.refine_coarse_fraction
    return options


def prepare_network_methods(evaluation, methods) -> dict:
    """Load the model once for the network methods in ``methods``: ``{method: (RegisterOptions, LoadedModel)}``.

    network+refine runs the model's own refinement (what ``register`` runs) unless ``--refine`` says
    otherwise, and DEFAULT_REFINE iterations for a model whose default is none."""
    from .loaded_model import load_model

    prepared = {}
    loaded = load_model(RegisterOptions(model=evaluation.model, device=evaluation.device))  # one-line errors now, not after hours
    if "network" in methods:
        options = network_options(evaluation, 0)
        prepared["network"] = (options, loaded.with_options(options))
    if "network+refine" in methods:
        refine = evaluation.refine
        if refine is None:
            refine = loaded.refinement["iterations"] or DEFAULT_REFINE
        options = network_options(evaluation, refine)
        prepared["network+refine"] = (options, loaded.with_options(options))
    return prepared


def run_network(fixed, moving, context, method: str):
    from . import register  # looked up at call time: tests may record the calls

    options, loaded = context["network_methods"][method]
    result = register.register_images(fixed.image, moving.image, options, moving_labels=moving.labels, log=lambda message: None, model=loaded)
    metrics = result.metrics
    stats = {"folding_fraction": metrics["folding_fraction"], "std_log_jacobian": metrics["std_log_jacobian"]}
    if metrics.get("fallback"):
        stats["note"] = metrics["fallback"]
    return result.warped_labels, stats


def ants_warp_statistics(warp_path: str, affine_path: str | None, fixed_image) -> dict:
    """Folding and std log det J of ANTs' whole forward transform ``p -> A(W(p))`` on the fixed
    grid: det J = det(A) * det(I + grad w), w the SyN displacement (LPS mm, defined on the fixed
    domain), computed as ``register`` computes its own (:func:`register.jacobian_of`)."""
    from ..image.io import same_grid
    from ..tensor.jacobian import folding_statistics
    from .register import jacobian_of

    warp = sitk.ReadImage(warp_path)
    if not same_grid(warp, fixed_image):
        warp = sitk.Resample(warp, fixed_image, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkLinear, 0.0)
    det = jacobian_of(warp)
    det_affine = 1.0
    if affine_path:
        det_affine = float(np.linalg.det(np.array(sitk.ReadTransform(affine_path).GetParameters()[:9]).reshape(3, 3)))
    stats = folding_statistics(det * det_affine)
    return {"folding_fraction": stats["folding_fraction"], "std_log_jacobian": stats["std_log_jacobian"]}


def run_ants(fixed, moving, context):
    ants = context["ants"]
    as_ants = lambda image: ants.from_sitk(sitk.Cast(image, sitk.sitkFloat32))  # noqa: E731  (labels too: genericLabel reads floats)
    with tempfile.TemporaryDirectory(prefix="voxelmorphreg-ants-") as folder:
        try:
            fixed_a = as_ants(fixed.image)
            registration = ants.registration(fixed_a, as_ants(moving.image), type_of_transform="SyN", outprefix=str(Path(folder) / "pair_"))
            transforms = list(registration["fwdtransforms"])
            warped = ants.apply_transforms(fixed_a, as_ants(moving.labels), transformlist=transforms, interpolator="genericLabel")
        except Exception as exc:  # ANTs raises RuntimeError/ValueError with multi-line text
            first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise VoxelMorphRegError(f"ANTs SyN failed on {moving.name} -> {fixed.name} ({first[:200]})") from None
        warped_labels = sitk.Cast(sitk.Round(ants.to_sitk(warped)), sitk.sitkInt32)
        warped_labels.CopyInformation(fixed.labels)
        warp_path = next((t for t in transforms if t.endswith((".nii.gz", ".nii", ".nrrd", ".mha")) and "Inverse" not in Path(t).name), None)
        affine_path = next((t for t in transforms if t.endswith(".mat")), None)
        if warp_path is None:
            raise VoxelMorphRegError(f"ANTs SyN on {moving.name} -> {fixed.name} wrote no forward warp field ({transforms})")
        stats = ants_warp_statistics(warp_path, affine_path, fixed.image)
    return warped_labels, stats


def runner(method: str):
    """The function ``(fixed, moving, context) -> (warped labels, stats)`` of a method."""
    if method == "none":
        return run_none
    if method == "affine":
        return run_affine
    if method in ("network", "network+refine"):
        return lambda fixed, moving, context: run_network(fixed, moving, context, method)
    return run_ants
