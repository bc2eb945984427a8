"""qc.png: one picture to judge a registration at a glance.

Rows are the axial, coronal and sagittal planes through the fixed image's centre; columns are
the fixed image, the moving image on the fixed grid before deformable registration (after the
affine, when there is one), the warped image, a colour overlay (fixed magenta, warped green:
grey where they agree), the deformation grid, and the Jacobian determinant (folding in black).
"""

from __future__ import annotations

import io

import numpy as np
import SimpleITK as sitk


DISPLAY_ORIENTATION = "LPS"  # array [S, P, L] after reorientation: easy anatomical planes
PLANE_NAMES = ("axial", "coronal", "sagittal")
PERCENTILE_STRIDE = 3  # display window from every 3rd voxel along each axis (1/27 of them): the same window, 27x fewer values to sort


def plane_slabs(fixed: sitk.Image) -> list[sitk.Image]:
    """One-voxel-thick slabs of the fixed image (reoriented to LPS) through its centre: axial,
    coronal, sagittal. Each is a reference grid for ``sitk.Resample``: only the three displayed
    planes of every volume are sampled, instead of reorienting and resampling whole volumes."""
    oriented = sitk.DICOMOrient(fixed, DISPLAY_ORIENTATION)
    size_i, size_j, size_k = oriented.GetSize()
    i, j, k = size_i // 2, size_j // 2, size_k // 2
    return [oriented[:, :, k : k + 1], oriented[:, j : j + 1, :], oriented[i : i + 1, :, :]]


def _plane(image: sitk.Image, slab: sitk.Image, transform=None, interpolator=sitk.sitkLinear) -> np.ndarray:
    """``image`` at the voxels of ``slab`` through ``transform`` (fixed -> image points), as the
    displayed 2-D array: superior and anterior up, patient left on the right (display convention)."""
    transform = transform if transform is not None else sitk.Transform(3, sitk.sitkIdentity)
    pixel = sitk.sitkVectorFloat64 if image.GetNumberOfComponentsPerPixel() > 1 else sitk.sitkFloat32
    array = sitk.GetArrayFromImage(sitk.Resample(image, slab, transform, interpolator, 0.0, pixel))
    return _oriented_plane(array, slab)


def _oriented_plane(array: np.ndarray, slab: sitk.Image) -> np.ndarray:
    size_i, size_j, size_k = slab.GetSize()
    if size_k == 1:  # axial: rows P (anterior at top), columns L
        return array[0]
    if size_j == 1:  # coronal: rows S (superior at top), columns L
        return array[:, 0][::-1]
    return array[:, :, 0][::-1]  # sagittal: rows S, columns P


def _aspect(slab: sitk.Image) -> float:
    sx, sy, sz = slab.GetSpacing()
    size_i, size_j, size_k = slab.GetSize()
    return sy / sx if size_k == 1 else (sz / sx if size_j == 1 else sz / sy)


def _window(volume: sitk.Image) -> tuple[float, float]:
    view = sitk.GetArrayViewFromImage(volume)[::PERCENTILE_STRIDE, ::PERCENTILE_STRIDE, ::PERCENTILE_STRIDE]
    low, high = np.percentile(view, [1, 99.5])
    return float(low), float(max(high - low, 1e-6))


def _scaled(array: np.ndarray, window) -> np.ndarray:
    low, width = window
    return np.clip((array - low) / width, 0, 1)


def qc_planes(fixed: sitk.Image, moving: sitk.Image, result) -> list[dict]:
    """What the figure shows, per plane (axial, coronal, sagittal): the fixed image, the moving
    one through the affine (or none), the warped one (each scaled to [0, 1] by its own window),
    the Jacobian determinant, the moving-space position (LPS mm) of every displayed voxel
    (``p + u(p)``, for the deformation grid) and the aspect ratio."""
    from ..image.displacement import physical_points

    windows = [_window(fixed), _window(moving), _window(result.warped)]
    planes = []
    for slab in plane_slabs(fixed):
        points = _oriented_plane(physical_points(slab), slab)
        planes.append({
            "fixed": _scaled(_oriented_plane(sitk.GetArrayFromImage(slab), slab), windows[0]),
            "before": _scaled(_plane(moving, slab, result.affine), windows[1]),
            "warped": _scaled(_plane(result.warped, slab), windows[2]),
            "jacobian": _plane(result.jacobian, slab, interpolator=sitk.sitkNearestNeighbor),
            "mapped": points + _plane(result.displacement, slab),
            "aspect": _aspect(slab),
            **_mask_planes(result, slab),
        })
    return planes


def _mask_planes(result, slab) -> dict:
    """The brain masks' planes (fixed mask on the fixed grid, the moving one through the affine) when
    the registration used them (``--brain-mask auto`` with a whole head), else nothing."""
    used = (getattr(result, "metrics", None) or {}).get("brain_mask", {}).get("used")
    if not used or getattr(result, "brain_mask", None) is None:
        return {}
    planes = {"fixed_mask": _plane(result.brain_mask, slab, interpolator=sitk.sitkNearestNeighbor)}
    if getattr(result, "moving_brain_mask", None) is not None:
        planes["moving_mask"] = _plane(result.moving_brain_mask, slab, result.affine, interpolator=sitk.sitkNearestNeighbor)
    return planes


def draw_qc(fixed: sitk.Image, moving: sitk.Image, result, title: str | None = None) -> bytes:
    """PNG bytes of the QC figure for a :class:`RegistrationResult`.

    Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global figure state).
    Only the three displayed planes of each volume are sampled (:func:`qc_planes`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    planes = qc_planes(fixed, moving, result)
    columns = ["fixed", "moving (affine only)" if result.affine is not None else "moving (no registration)", "warped moving", "overlay: fixed magenta, warped green", "deformation grid", "Jacobian determinant"]
    fig = Figure(figsize=(21, 10.5), facecolor="black")
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 6)
    in_plane_axes = [(0, 1), (0, 2), (1, 2)]  # physical components spanning each plane (x, y, z)
    jac_image = None
    for row in range(3):
        plane = planes[row]
        aspect = plane["aspect"]
        for col in range(6):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_facecolor("black")
            if row == 0:
                ax.set_title(columns[col], color="white", fontsize=11)
            if col < 3:
                ax.imshow(plane[("fixed", "before", "warped")[col]], cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="bilinear")
                outline = plane.get(("fixed_mask", "moving_mask", "fixed_mask")[col])
                if outline is not None and 0 < outline.max():
                    ax.contour(outline, levels=[0.5], colors="cyan", linewidths=0.8)
            elif col == 3:
                f, w = plane["fixed"], plane["warped"]
                ax.imshow(np.stack([f, w, f], axis=-1), aspect=aspect, interpolation="bilinear")
            elif col == 4:
                ax.imshow(plane["fixed"], cmap="gray", vmin=0, vmax=1, aspect=aspect, alpha=0.5)
                slab = plane["mapped"]
                for component in in_plane_axes[row]:
                    values = slab[..., component]
                    levels = np.arange(np.floor(values.min() / 5) * 5, values.max(), 5.0)
                    if len(levels) > 1:
                        ax.contour(values, levels=levels, colors="yellow", linewidths=0.5)
                ax.set_xlim(-0.5, slab.shape[1] - 0.5)
                ax.set_ylim(slab.shape[0] - 0.5, -0.5)
                ax.set_aspect(aspect)
            else:
                jac = plane["jacobian"]
                jac_image = ax.imshow(jac, cmap="RdBu_r", vmin=0, vmax=2, aspect=aspect, interpolation="nearest")
                folded = np.ma.masked_where(jac > 0, np.ones_like(jac))
                ax.imshow(folded, cmap="gray", vmin=0, vmax=2, aspect=aspect, interpolation="nearest")
        axes[row, 0].set_ylabel(PLANE_NAMES[row], color="white", fontsize=11)
    if jac_image is not None:
        bar = fig.colorbar(jac_image, ax=axes[:, 5].tolist(), fraction=0.046, pad=0.02)
        bar.ax.tick_params(colors="white")
        bar.set_label("det J (1 = volume kept, <= 0 folded, shown black)", color="white")
    fig.suptitle(title or _summary(result.metrics), color="white", fontsize=13)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, facecolor="black")
    return buffer.getvalue()


def _summary(metrics: dict) -> str:
    parts = [f"model: {metrics.get('model', '?').split('/')[-1]}", f"device: {metrics.get('device', '?')}"]
    dice = metrics.get("dice")
    if dice and dice.get("mean_after") is not None:
        parts.append(f"mean Dice {dice['mean_before']:.3f} -> {dice['mean_after']:.3f}")
    parts.append(f"folded voxels {100 * metrics.get('folding_fraction', 0):.3f}%" + (" in the brain" if metrics.get("folding_region") == "fixed brain mask" else ""))
    focus = metrics.get("brain_mask") or {}
    if focus.get("used"):
        parts.append(f"brain masks (cyan) {focus['fixed']['volume_ml']:.0f} / {focus['moving']['volume_ml']:.0f} mL")
    parts.append(f"std log detJ {metrics.get('std_log_jacobian', 0):.3f}")
    seconds = metrics.get("seconds", {})
    if "total" in seconds:
        parts.append(f"{seconds['total']:.1f} s")
    return "   |   ".join(parts)
