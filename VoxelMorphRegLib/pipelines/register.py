"""Register one pair end to end, in physical space.

Stages: read and check -> affine pre-alignment (SimpleITK) -> both images onto the model grid
-> network velocity (and optional refinement) -> integration -> the displacement brought to the
fixed image's own grid in mm and composed with the affine into ONE field -> warped image and
labels through that field (ITK's WarpImageFilter) -> Jacobian, metrics, files, QC figure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from .. import contract
from ..contract import Done, Message, Progress, RegisterOptions, Stage, no_events
from ..errors import CancelledError
from ..image.affine import affine_register
from ..image.displacement import affine_parts, compose_inverse_on_moving, compose_on_fixed, flow_to_physical, moving_region, vector_image, warp_through
from ..image.io import ensure_output_folder
from ..image.nifti_writer import write_nifti
from ..image.output_set import OutputSet, add_to_committed_set
from ..image.pair_files import PairImages, read_pair  # noqa: F401 (read_pair re-exported)
from ..image.model_grid import resample_to
from ..image.preprocessing import grid_for, image_on_grid
from ..model_resolution import bundled_model_path, model_search_path  # noqa: F401 (re-exported)
from ..tensor.jacobian import folding_statistics, physical_jacobian_determinant
from ..tensor.refinement import refine_velocity, zero_velocity
from .brain_focus import BrainFocus, apply_taper, brain_region, brains, deformable_region, focus_pair, velocity_taper
from .contrast_check import contrast_decision, optimisation_refinement
from .label_metrics import dice_per_label
from .memory_guard import check_memory
from .loaded_model import DEFAULT_NONE_REFINEMENT, DEFAULT_NONE_SMOOTHNESS, LoadedModel, load_model, refinement_settings  # noqa: F401 (re-exported)

# Fields are rounded to 1/1024 mm (an error below 0.0005 mm) and written as float32, which holds
# every such value below 8192 mm exactly: half the bytes of float64 and half the gzip time
# (a 160x192x224 field: 1.6 s instead of 3.4 s at level 1, quiet 2-core CPU); reading one back as
# sitk.sitkVectorFloat64 (what sitk.DisplacementFieldTransform takes) gives the same numbers.
FIELD_QUANTUM_MM = 1.0 / 1024
# gzip level of the .nii.gz outputs (image/gzip_streams.py: ISA-L, or zlib with Z_RLE without it).
# A 160x192x224 displacement field as float32 (82.6 MB) on the quiet 2-core AMD CPU at level 1:
# ISA-L 0.22 s / 44.5 MB, zlib Z_RLE 0.87 s / 50.3 MB, zlib level 6 8.3 s / 41.9 MB
# (python bench/deflate_strategies.py; bench/results/deflate-strategies-2026-12-04-epyc.txt).
COMPRESSION_LEVEL = 1


def _write_field(field: sitk.Image, path) -> dict:
    return write_nifti(field, path, compression_level=COMPRESSION_LEVEL, displacement=True, float32=True)


def _write_image(image: sitk.Image, path) -> dict:
    return write_nifti(image, path, compression_level=COMPRESSION_LEVEL)


@dataclass
class RegistrationResult:
    warped: sitk.Image
    displacement: sitk.Image  # fixed -> moving, on the fixed grid, LPS mm, VectorFloat64
    inverse_displacement: sitk.Image | None  # moving -> fixed, on the moving grid (None with --no-inverse)
    jacobian: sitk.Image
    warped_labels: sitk.Image | None
    affine: sitk.Transform | None
    metrics: dict = field(default_factory=dict)
    brain_mask: sitk.Image | None = None  # the fixed scan's brain mask (uint8, fixed grid) with --brain-mask auto
    moving_brain_mask: sitk.Image | None = None  # the moving scan's, on its own grid


class _Stages:
    """Progress lines ``[ NN%] stage`` on the log, a :class:`~contract.Stage` event each, and seconds per stage."""

    def __init__(self, log, events=no_events):
        self.log = log
        self.events = events
        self.seconds: dict[str, float] = {}
        self.current = None
        self.started = time.perf_counter()
        self.stage_start = self.started

    def start(self, name: str, percent: int, text: str):
        self.stop()
        self.current = name
        self.stage_start = time.perf_counter()
        self.log(f"[{percent:3d}%] {text}")
        self.events(Stage(name, percent, text))

    def stop(self):
        if self.current:
            self.seconds[self.current] = round(self.seconds.get(self.current, 0.0) + time.perf_counter() - self.stage_start, 3)
            self.current = None

    def total(self):
        self.stop()
        self.seconds["total"] = round(time.perf_counter() - self.started, 3)
        return self.seconds


def _velocity_and_flows(loaded: LoadedModel, moving_t, fixed_t, device, stages, log, should_stop, events=no_events, inverse=True, velocity=None, taper=None, refinement=None):
    """Run the network (unless ``velocity`` is given) and the refinement on ``device``; returns
    (flow, inverse flow or None) as NumPy, voxel units. ``taper``: the brain focus's velocity weight."""
    model = loaded.module().to(device)  # a no-op where it is already there; back from the CPU after a fall-back
    refinement = refinement or loaded.refinement
    moving_t, fixed_t = moving_t.to(device), fixed_t.to(device)
    shape = moving_t.shape[2:]
    if velocity is not None:
        velocity = velocity.to(device)
    elif loaded.has_network:
        stages.start("network", 40, f"network inference on {device.type.upper()}")
        with torch.inference_mode():
            velocity = model.velocity(moving_t, fixed_t)
        if device.type == "cuda":
            torch.cuda.synchronize()
    else:
        velocity = zero_velocity(model, shape, device)
    refine_iterations = refinement["iterations"]
    if refine_iterations > 0:
        coarse = refinement.get("coarse_iterations", 0)
        schedule = f" ({coarse} on the coarse grid, {refine_iterations - coarse} on the model grid)" if coarse else ""
        stages.start("refine", 55, f"refinement: {refine_iterations} iterations{schedule} on {device.type.upper()}")
        step = max(1, refine_iterations // 10)

        def progress(i, n, loss):
            if i % step == 0 or i == n:
                percent, text = 55 + int(10 * i / n), f"refinement {i}/{n} loss {loss:.4f}"
                log(f"[{percent:3d}%] {text}")
                events(Progress("refine", i, n, percent, float(loss), text))

        velocity = refine_velocity(
            moving_t, fixed_t, velocity, lambda v: model.flow_from_velocity(v, shape), refinement.get("fine_iterations", refine_iterations),
            smoothness_weight=refinement["smoothness"], learning_rate=refinement["learning_rate"], progress=progress, should_stop=should_stop,
            coarse_iterations=refinement.get("coarse_iterations", 0), integration_steps=model.integration_steps,
        )
        if should_stop():
            raise CancelledError("registration cancelled")
    stages.start("integration", 65, "integrating the velocity field (scaling and squaring)")
    velocity = apply_taper(velocity.detach(), taper)
    with torch.inference_mode():
        flow = model.flow_from_velocity(velocity, shape)
        inverse = model.inverse_flow(velocity, shape)[0].cpu().numpy() if inverse else None
    return flow[0].cpu().numpy(), inverse, model.integration_steps


@dataclass
class PreparedPair:
    """A pair up to the network: the affine and both images on the model grid (:func:`prepare_pair`)."""

    config: object  # the ModelConfig of this pair
    memory: dict
    affine: sitk.Transform | None
    grid: sitk.Image
    fixed_t: torch.Tensor  # [1, 1, K, J, I] on the CPU
    moving_t: torch.Tensor
    seconds: dict
    elapsed: float
    focus: BrainFocus | None = None  # the brain masks (--brain-mask)
    taper: torch.Tensor | None = None  # the velocity's weight on the model grid when the focus is used


def prepare_pair(fixed: sitk.Image, moving: sitk.Image, options: RegisterOptions, model: LoadedModel, log=print, should_stop=lambda: False, events=no_events, stages=None) -> PreparedPair:
    """Memory check, affine pre-alignment and the model grid: what comes before the network.

    Batch registration prepares several pairs, runs the network on them together and hands each
    its :class:`PreparedPair` and velocity (``register_images(prepared=..., velocity=...)``)."""
    stages = stages or _Stages(log, events)
    started = time.perf_counter()
    config = model.config_for(fixed)
    memory = check_memory(fixed, moving, config)  # one-line error before any work when it would not fit
    mode = options.brain_mask
    if mode != "off":
        stages.start("brain_mask", 7, "brain masks (bundled brain extraction network; a stripped scan keeps its own)")
    focus = focus_pair(fixed, moving, mode, options.brain_mask_model)
    if focus.fallback:
        log(f"warning: {focus.fallback}")
        events(Message(focus.fallback, "warning"))
    fixed_in, moving_in = brains(focus, fixed, moving) if focus.used else (fixed, moving)
    if should_stop():
        raise CancelledError("registration cancelled")
    affine = None
    if options.affine:
        stages.start("affine", 10, "affine pre-alignment (SimpleITK, mutual information)" + (" of the two brains" if focus.used else ""))
        affine = affine_register(fixed_in, moving_in)
    if should_stop():
        raise CancelledError("registration cancelled")
    stages.start("model_grid", 30, "resampling both images onto the model grid" + (" around the fixed brain" if focus.used else ""))
    grid = grid_for(brain_region(fixed, focus.fixed.mask) if focus.used else fixed, config)
    fixed_array = image_on_grid(fixed_in, grid, None, config)
    moving_array = image_on_grid(moving_in, grid, affine, config)
    taper = velocity_taper(focus.fixed.mask, grid) if focus.used else None
    stages.stop()
    return PreparedPair(config, memory, affine, grid, torch.from_numpy(fixed_array)[None, None], torch.from_numpy(moving_array)[None, None],
                        dict(stages.seconds), time.perf_counter() - started, focus, taper)


def register_images(fixed: sitk.Image, moving: sitk.Image, options: RegisterOptions | None = None, moving_labels: sitk.Image | None = None, fixed_labels: sitk.Image | None = None, log=print, should_stop=lambda: False, events=no_events, model: LoadedModel | None = None,
                    prepared: PreparedPair | None = None, velocity: torch.Tensor | None = None) -> RegistrationResult:
    """Register ``moving`` onto ``fixed`` (both float32 SimpleITK volumes, already checked).

    ``model``: a :class:`LoadedModel` prepared once for many pairs; it brings the network, device,
    refinement and integration steps, and ``options`` then only say ``affine`` (and ``qc`` for
    :func:`register_files`). Without it the model of ``options`` is loaded for this pair.
    ``prepared`` (from :func:`prepare_pair`) and ``velocity`` (the network's, ``[1, 3, ...]``):
    what batch registration computed beforehand for this pair; both need ``model``.
    ``log`` gets the human lines, ``events`` the :mod:`~VoxelMorphRegLib.contract` events."""
    options = options or RegisterOptions()
    stages = _Stages(log, events)
    if model is None:
        stages.start("model", 5, "loading the model")
        model = load_model(options)
    device, refinement, model_description = model.device, model.refinement, model.description
    if prepared is None:
        prepared = prepare_pair(fixed, moving, options, model, log, should_stop, events, stages)
    else:
        stages.seconds.update(prepared.seconds)
        stages.started -= prepared.elapsed  # seconds["total"] includes the preparation
    config, memory, affine, grid = prepared.config, prepared.memory, prepared.affine, prepared.grid
    fixed_t, moving_t = prepared.fixed_t, prepared.moving_t
    focus, taper = prepared.focus, prepared.taper
    contrast = None
    if model.has_network:
        contrast = contrast_decision(fixed_t, moving_t, options.contrast)
        if contrast["different"] and options.refine_iterations == 0:
            text = "the images look like two different contrasts; --refine 0 asks for the network alone, which learnt pairs of one contrast"
            log(f"warning: {text}")
            events(Message(text, "warning"))
        elif contrast["different"]:  # the network learnt one contrast: the optimisation alone, from zero
            refinement = optimisation_refinement(options)
            velocity = zero_velocity(model.module(), fixed_t.shape[2:], torch.device("cpu"))
            text = ("the images look like two different contrasts" + (f" (signed local NCC {contrast['signed_local_ncc']:.2f})" if "signed_local_ncc" in contrast else "")
                    + f"; registering them by optimisation alone ({refinement['iterations']} iterations, no network)")
            log(text)
            events(Message(text, "info"))

    used_device, fallback = device, None
    try:
        flow, inverse_flow, steps = _velocity_and_flows(model, moving_t, fixed_t, device, stages, log, should_stop, events, options.inverse, velocity, taper, refinement)
    except torch.cuda.OutOfMemoryError:
        fallback = "CUDA ran out of memory; fell back to the CPU"
        log(f"warning: {fallback}")
        events(Message(fallback, "warning"))
        torch.cuda.empty_cache()
        used_device = torch.device("cpu")
        flow, inverse_flow, steps = _velocity_and_flows(model, moving_t, fixed_t, used_device, stages, log, should_stop, events, options.inverse, velocity, taper, refinement)
    if should_stop():
        raise CancelledError("registration cancelled")

    stages.start("field", 70, "composing the displacement with the affine on the fixed grid")
    # With the brain focus the deformation is zero outside a box around the fixed brain: only that box
    # goes through ITK's composition (and the Jacobian), the rest of the grid is the affine's field.
    region = deformable_region(fixed, focus.fixed.mask) if focus is not None and focus.used else None
    deformable = vector_image(flow_to_physical(flow, grid), grid)
    displacement = vector_image(_quantised(compose_on_fixed(deformable, affine, fixed, region)), fixed)
    inverse_displacement = None  # options.inverse False (--no-inverse): neither computed nor written
    if inverse_flow is not None:
        inverse_deformable = vector_image(flow_to_physical(inverse_flow, grid), grid)
        inverse_region = moving_region(fixed, region, affine, moving) if region is not None else None
        inverse_displacement = vector_image(_quantised(compose_inverse_on_moving(inverse_deformable, affine, moving, inverse_region)), moving)

    stages.start("warp", 78, "warping the moving image (and labels) onto the fixed grid")
    warped = warp_through(moving, displacement)
    warped_labels = None
    if moving_labels is not None:
        warped_labels = warp_through(moving_labels, displacement, labels=True)

    stages.start("metrics", 85, "Jacobian determinant and metrics")
    determinant = jacobian_of(displacement, region, affine)
    jacobian = sitk.GetImageFromArray((np.round(determinant.numpy() * 4096) / 4096).astype(np.float32))
    jacobian.CopyInformation(fixed)
    metrics = {
        "fixed_size": list(fixed.GetSize()),
        "fixed_spacing": list(fixed.GetSpacing()),
        "moving_size": list(moving.GetSize()),
        "memory": memory,  # the estimated peak and what was available when the run started (pipelines/memory_guard.py)
        "model": model_description,
        "model_grid": {"size": list(grid.GetSize()), "spacing": list(grid.GetSpacing()), "orientation": config.orientation},
        "device": used_device.type,
        "device_name": torch.cuda.get_device_name(0) if used_device.type == "cuda" else "CPU",
        "affine": options.affine,
        "refine_iterations": refinement["iterations"],
        "refine_smoothness": refinement["smoothness"],
        "refine_learning_rate": refinement["learning_rate"],
        "refine_coarse_iterations": refinement.get("coarse_iterations", 0),
        "integration_steps": steps,
        **folding_statistics(determinant, _brain_voxels(focus)),
        "folding_region": "fixed brain mask" if focus is not None and focus.used else "whole fixed grid",
        "brain_mask_mode": options.brain_mask,
        "contrast_mode": options.contrast,
    }
    if contrast is not None:
        metrics["contrast"] = contrast
    if focus is not None and (focus.fixed is not None or focus.fallback):
        metrics["brain_mask"] = focus.describe()
    if fallback:
        metrics["fallback"] = fallback
    if affine is not None:
        matrix = np.array(affine.GetMatrix()).reshape(3, 3)
        metrics["affine_matrix"] = matrix.round(5).tolist()
        metrics["affine_translation_mm"] = np.round(affine.GetTranslation(), 3).tolist()
    if fixed_labels is not None and moving_labels is not None:
        metrics["dice"] = _dice_report(fixed_labels, moving_labels, affine, warped_labels)
    metrics["seconds"] = stages.total()
    fixed_mask = focus.fixed.mask if focus is not None and focus.fixed is not None else None
    moving_mask = focus.moving.mask if focus is not None and focus.moving is not None else None
    return RegistrationResult(warped, displacement, inverse_displacement, jacobian, warped_labels, affine, metrics, fixed_mask, moving_mask)


def _brain_voxels(focus):
    """The fixed brain as a torch mask where the focus is used (Jacobian and folding inside it), else None."""
    if focus is None or not focus.used:
        return None
    return torch.from_numpy(sitk.GetArrayViewFromImage(focus.fixed.mask) > 0)


def jacobian_of(displacement: sitk.Image, region=None, affine: sitk.Transform | None = None) -> torch.Tensor:
    """det J of ``p -> p + u(p)`` for a displacement image ``u`` (LPS mm) on its own grid, ``[K, J, I]``.

    Differences are taken along the grid's index axes and combined with its direction and spacing
    (``det J = det(M + G) / det M``, tensor/jacobian.py), so they are right on oblique, anisotropic
    grids too (see docs/GEOMETRY.md); evaluate uses it for ANTs' field. ``region`` (``(low, size)``,
    with ``affine``): the box outside which ``u`` is the affine's field, whose determinant is det A:
    only the box (and a voxel around it) is differentiated."""
    from ..image.displacement import index_to_physical_matrix

    field = sitk.GetArrayViewFromImage(displacement)
    matrix = index_to_physical_matrix(displacement)
    if region is None:
        return physical_jacobian_determinant(field, matrix)
    (i0, j0, k0), (ni, nj, nk) = region
    out = torch.full(field.shape[:3], float(np.linalg.det(affine_parts(affine)[0])), dtype=torch.float32)
    lo = [max(v - 1, 0) for v in (k0, j0, i0)]
    hi = [min(v + n + 1, size) for v, n, size in zip((k0, j0, i0), (nk, nj, ni), field.shape[:3])]
    block = physical_jacobian_determinant(field[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], matrix)
    inner = tuple(slice(v - low, v - low + n) for v, low, n in zip((k0, j0, i0), lo, (nk, nj, ni)))
    out[k0:k0 + nk, j0:j0 + nj, i0:i0 + ni] = block[inner]
    return out


def _quantised(field: np.ndarray) -> np.ndarray:
    """``field`` rounded to FIELD_QUANTUM_MM, in place (the arrays are large)."""
    field *= 1.0 / FIELD_QUANTUM_MM
    np.round(field, out=field)
    field *= FIELD_QUANTUM_MM
    return field


def _dice_report(fixed_labels, moving_labels, affine, warped_labels) -> dict:
    # GetArrayFromImage copies: a view of a temporary image (resample_to's result) would be read
    # after the image is freed, giving garbage scores.
    fixed_array = sitk.GetArrayFromImage(fixed_labels)
    before = sitk.GetArrayFromImage(resample_to(moving_labels, fixed_labels, None, labels=True))
    after = sitk.GetArrayFromImage(warped_labels)
    labels = sorted(set(np.unique(fixed_array).tolist()) & set(np.unique(sitk.GetArrayFromImage(moving_labels)).tolist()) - {0})
    report = {"labels": labels}
    stages = [("before", before), ("after", after)]
    if affine is not None:
        stages.insert(1, ("affine", sitk.GetArrayFromImage(resample_to(moving_labels, fixed_labels, affine, labels=True))))
    for name, array in stages:
        scores = dice_per_label(array, fixed_array, labels)
        report[name] = {str(k): round(v, 4) for k, v in scores.items()}
        report[f"mean_{name}"] = round(float(np.mean(list(scores.values()))), 4) if scores else None
    return report


def register_files(fixed_path, moving_path, out_dir, options: RegisterOptions | None = None, moving_labels=None, fixed_labels=None, log=print, should_stop=lambda: False, events=no_events, model: LoadedModel | None = None,
                   images: PairImages | None = None, started: float | None = None) -> RegistrationResult:
    """Read, register and write every output into ``out_dir`` (see docs/OUTPUTS.md).

    ``images``: the pair already read (:func:`~..image.pair_files.read_pair`; the command line
    reads it while this module is imported), with ``started`` the ``time.perf_counter()`` when its
    reading began. Emits the run's events on ``events``: Stage (read ... write), Progress
    (refinement), Done."""
    options = options or RegisterOptions()
    if images is None:
        started = time.perf_counter()
        log("[  0%] reading the images")
        events(Stage("read", 0, "reading the images"))
        out = ensure_output_folder(out_dir)
        images = read_pair(fixed_path, moving_path, moving_labels, fixed_labels)
    else:
        out = ensure_output_folder(out_dir)
        started = time.perf_counter() - images.seconds if started is None else started
    result = register_images(images.fixed, images.moving, options, images.moving_labels, images.fixed_labels, log, should_stop, events, model)
    written = write_outputs(out, images, result, options, started, log, events)
    log("[100%] done")
    dice = result.metrics.get("dice") or {}
    events(Done(str(out_dir), written, result.metrics["seconds"]["total"], {key: dice[key] for key in ("mean_before", "mean_affine", "mean_after") if key in dice}))
    return result


def write_outputs(out, images: PairImages, result: RegistrationResult, options: RegisterOptions, started: float, log=print, events=no_events) -> list:
    """Write ``result`` into ``out`` through one commit step; returns the names of this run's set.

    ``started``: ``time.perf_counter()`` when the run began (for seconds["total"])."""
    out = Path(out)
    text = "writing the results" + (" (qc.png after them)" if options.qc else "")
    log(f"[ 90%] {text}")
    events(Stage("write", 90, text))
    seconds = result.metrics["seconds"]
    compressed = options.compress
    files = {contract.WARPED: result.warped, contract.WARPED_LABELS: result.warped_labels, contract.DISPLACEMENT: result.displacement,
             contract.INVERSE_DISPLACEMENT: result.inverse_displacement, contract.JACOBIAN: result.jacobian if options.jacobian else None}
    if (result.metrics.get("brain_mask") or {}).get("used"):  # the masks the registration used (a whole head)
        files[contract.BRAIN_MASK], files[contract.MOVING_BRAIN_MASK] = result.brain_mask, result.moving_brain_mask
    files = {contract.output_name(name, compressed): image for name, image in files.items() if image is not None}
    fields = {contract.output_name(name, compressed) for name in (contract.DISPLACEMENT, contract.INVERSE_DISPLACEMENT)}
    write_started = time.perf_counter()
    # One commit step (image/output_set.py): every file is written under a temporary name and
    # verified, then the set moves into place together, metrics.json (the manifest) last; on any
    # failure or signal the earlier set stays as it was. ITK compresses outside Python's lock: the
    # images are written side by side. The QC figure is drawn after the commit: qc.png joins the
    # committed set afterwards (output_set.add_to_committed_set), so it is never on the path to
    # the result.
    with OutputSet(out) as outputs:
        for name, image in files.items():
            # fields as NIfTI displacement vectors (intent 1006), the form Slicer reads without a warning
            outputs.add_image(name, image, _write_field if name in fields else _write_image)
        outputs.wait()  # a failed write's one-line error
        seconds["write"] = round(max([outputs.ended[name] for name in files], default=write_started) - write_started, 3)
        seconds["read"] = round(images.seconds, 3)
        seconds["total"] = round(time.perf_counter() - started, 3)
        result.metrics["inputs"] = dict(images.inputs)
        # An output of an earlier run that this run does not write (warped_labels, qc.png, the other format) is removed with that set.
        result.metrics = outputs.commit(result.metrics, contract.METRICS, replaces=contract.REGISTER_OUTPUT_NAMES)
    if options.qc:
        # Drawn once the set is committed: beside the writing it took the other core (qc 5.2 s
        # made the write stage 5.7 s on 2 cores, bench/results/cpu-2core-2026-12-02-r4.txt).
        from .qc_figure import draw_qc

        qc_started = time.perf_counter()
        png = draw_qc(images.fixed, images.moving, result)
        qc_seconds = round(time.perf_counter() - qc_started, 3)
        seconds = {**result.metrics["seconds"], "qc": qc_seconds, "qc_wait": qc_seconds}  # qc: drawing; qc_wait: how long the run waited for it after the commit (the same now)
        result.metrics = add_to_committed_set(out, contract.METRICS, contract.QC_FIGURE, png, {**result.metrics, "seconds": seconds})
    return [name for name in contract.REGISTER_OUTPUT_NAMES if name in result.metrics["files"] or name == contract.METRICS]  # this run's set
