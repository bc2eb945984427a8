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

from ..image.model_grid import resample_to

DISPLAY_ORIENTATION = "LPS"  # array [S, P, L] after reorientation: easy anatomical planes


def _display(image: sitk.Image) -> tuple[np.ndarray, tuple]:
    oriented = sitk.DICOMOrient(image, DISPLAY_ORIENTATION)
    return sitk.GetArrayFromImage(oriented), oriented.GetSpacing()


def _planes(volume: np.ndarray, spacing) -> list[tuple[np.ndarray, float]]:
    """(slice, aspect) for axial, coronal, sagittal; superior and anterior up, patient left on the right."""
    k, j, i = (n // 2 for n in volume.shape[:3])
    sx, sy, sz = spacing
    axial = volume[k]  # rows P (anterior at top), columns L
    coronal = volume[:, j][::-1]  # rows S (superior at top), columns L
    sagittal = volume[:, :, i][::-1]  # rows S, columns P
    return [(axial, sy / sx), (coronal, sz / sx), (sagittal, sz / sy)]


def _scaled(array: np.ndarray) -> np.ndarray:
    low, high = np.percentile(array, [1, 99.5])
    return np.clip((array - low) / max(high - low, 1e-6), 0, 1)


def draw_qc(fixed: sitk.Image, moving: sitk.Image, result, title: str | None = None) -> bytes:
    """PNG bytes of the QC figure for a :class:`RegistrationResult`.

    Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global figure state), so it
    may run on a thread of its own while the outputs are written (pipelines/register.py)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    before = resample_to(moving, fixed, result.affine)
    fixed_a, spacing = _display(fixed)
    before_a, _ = _display(before)
    warped_a, _ = _display(result.warped)
    jac_a, _ = _display(result.jacobian)
    field_a, _ = _display(result.displacement)
    oriented = sitk.DICOMOrient(fixed, DISPLAY_ORIENTATION)
    fixed_s, before_s, warped_s = _scaled(fixed_a), _scaled(before_a), _scaled(warped_a)

    columns = ["fixed", "moving (affine only)" if result.affine is not None else "moving (no registration)", "warped moving", "overlay: fixed magenta, warped green", "deformation grid", "Jacobian determinant"]
    fig = Figure(figsize=(21, 10.5), facecolor="black")
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 6)
    planes = [_planes(v, spacing) for v in (fixed_s, before_s, warped_s, jac_a)]
    map_planes = _mapped_planes(oriented, field_a, spacing)
    in_plane_axes = [(0, 1), (0, 2), (1, 2)]  # physical components spanning each plane (x, y, z)
    jac_image = None
    for row in range(3):
        aspect = planes[0][row][1]
        for col in range(6):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_facecolor("black")
            if row == 0:
                ax.set_title(columns[col], color="white", fontsize=11)
            if col < 3:
                ax.imshow(planes[col][row][0], cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="bilinear")
            elif col == 3:
                f, w = planes[0][row][0], planes[2][row][0]
                ax.imshow(np.stack([f, w, f], axis=-1), aspect=aspect, interpolation="bilinear")
            elif col == 4:
                ax.imshow(planes[0][row][0], cmap="gray", vmin=0, vmax=1, aspect=aspect, alpha=0.5)
                slab = map_planes[row][0]
                for component in in_plane_axes[row]:
                    values = slab[..., component]
                    levels = np.arange(np.floor(values.min() / 5) * 5, values.max(), 5.0)
                    if len(levels) > 1:
                        ax.contour(values, levels=levels, colors="yellow", linewidths=0.5)
                ax.set_xlim(-0.5, slab.shape[1] - 0.5)
                ax.set_ylim(slab.shape[0] - 0.5, -0.5)
                ax.set_aspect(aspect)
            else:
                jac = planes[3][row][0]
                jac_image = ax.imshow(jac, cmap="RdBu_r", vmin=0, vmax=2, aspect=aspect, interpolation="nearest")
                folded = np.ma.masked_where(jac > 0, np.ones_like(jac))
                ax.imshow(folded, cmap="gray", vmin=0, vmax=2, aspect=aspect, interpolation="nearest")
        axes[row, 0].set_ylabel(["axial", "coronal", "sagittal"][row], color="white", fontsize=11)
    if jac_image is not None:
        bar = fig.colorbar(jac_image, ax=axes[:, 5].tolist(), fraction=0.046, pad=0.02)
        bar.ax.tick_params(colors="white")
        bar.set_label("det J (1 = volume kept, <= 0 folded, shown black)", color="white")
    fig.suptitle(title or _summary(result.metrics), color="white", fontsize=13)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, facecolor="black")
    return buffer.getvalue()


def _mapped_planes(oriented: sitk.Image, field: np.ndarray, spacing) -> list:
    """Where the voxels of each displayed plane land in moving space (mm): only three slices are computed."""
    from ..image.displacement import index_to_physical_matrix

    matrix, origin = index_to_physical_matrix(oriented), np.array(oriented.GetOrigin())
    size_k, size_j, size_i = field.shape[:3]
    centre = [n // 2 for n in (size_k, size_j, size_i)]
    planes = []
    for fixed_axis in range(3):  # axial (k), coronal (j), sagittal (i), as in _planes
        ranges = [np.arange(n, dtype=float) for n in (size_k, size_j, size_i)]
        ranges[fixed_axis] = np.array([float(centre[fixed_axis])])
        k, j, i = np.meshgrid(*ranges, indexing="ij")
        points = np.stack([i, j, k], axis=-1) @ matrix.T + origin
        index = [slice(None)] * 3
        index[fixed_axis] = slice(centre[fixed_axis], centre[fixed_axis] + 1)
        mapped = (points + field[tuple(index)]).squeeze(axis=fixed_axis)
        planes.append(mapped if fixed_axis == 0 else mapped[::-1])
    aspects = [a for _, a in _planes(np.zeros((2, 2, 2)), spacing)]
    return list(zip(planes, aspects))


def _summary(metrics: dict) -> str:
    parts = [f"model: {metrics.get('model', '?').split('/')[-1]}", f"device: {metrics.get('device', '?')}"]
    dice = metrics.get("dice")
    if dice and dice.get("mean_after") is not None:
        parts.append(f"mean Dice {dice['mean_before']:.3f} -> {dice['mean_after']:.3f}")
    parts.append(f"folded voxels {100 * metrics.get('folding_fraction', 0):.3f}%")
    parts.append(f"std log detJ {metrics.get('std_log_jacobian', 0):.3f}")
    seconds = metrics.get("seconds", {})
    if "total" in seconds:
        parts.append(f"{seconds['total']:.1f} s")
    return "   |   ".join(parts)
