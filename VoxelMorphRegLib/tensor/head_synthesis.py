"""Synthetic whole-head images rendered from label maps, with the brain's signed distance as target.

The brain extraction network never sees a real image in training (SynthStrip's idea): each draw
takes a whole-head label map, moves it (rotation, scale, shift, a smooth warp), gives every label
an intensity (at random, or near T1, T2, FLAIR or PD values with a random offset), and corrupts the
result the way scanners and conversions do (partial volume, thick slices, bias field, gamma,
noise, a field of view that cuts the head, tumour-like blobs). The image is rendered at half the
network's spacing and averaged down, as a scan is when brought onto the network's grid.

Pure PyTorch on tensors in the label map's own voxel frame (1 mm, the network's orientation);
nothing here knows files or FreeSurfer: the label tables arrive as arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .synthesis import bias_field, gaussian_blur, smooth_noise

# Tissue values of the contrasts the renderer imitates: (white matter, grey matter, CSF).
CONTRASTS = {
    "t1": (1.0, 0.6, 0.15),
    "t2": (0.35, 0.55, 1.0),
    "flair": (0.55, 0.75, 0.08),
    "pd": (0.65, 0.85, 0.95),
}


@dataclass
class HeadSynthesisSettings:
    grid_size: tuple = (64, 64, 64)  # the network grid, voxels
    spacing: float = 4.0  # mm per network voxel; rendering runs at spacing / 2
    max_rotation: float = 20.0  # degrees about each axis (a tenth of the draws up to 45)
    max_scale: float = 0.12
    max_shift: float = 30.0  # mm
    warp_mm: float = 4.0
    contrast_prior: float = 0.5  # share of draws with a named contrast (the rest: every label at random)
    thick_slices: float = 0.35  # share of draws with 4-8 mm slices along one axis
    fov_cut: float = 0.4  # share of draws whose field of view cuts the head
    lesions: float = 0.3  # share of draws with tumour-like blobs inside the brain
    distance_clip: float = 30.0  # mm


def _uniform(generator, low, high):
    return low + (high - low) * torch.rand((), generator=generator).item()


def _rotation(angles_deg):
    a = [math.radians(v) for v in angles_deg]
    c, s = [math.cos(v) for v in a], [math.sin(v) for v in a]
    rx = torch.tensor([[1, 0, 0], [0, c[0], -s[0]], [0, s[0], c[0]]], dtype=torch.float32)
    ry = torch.tensor([[c[1], 0, s[1]], [0, 1, 0], [-s[1], 0, c[1]]], dtype=torch.float32)
    rz = torch.tensor([[c[2], -s[2], 0], [s[2], c[2], 0], [0, 0, 1]], dtype=torch.float32)
    return rx @ ry @ rz


def contrast_table(tissue_t1: torch.Tensor, contrast: str) -> torch.Tensor:
    """Per-label values of a named contrast from the labels' T1 values (WM 1, GM about 0.6, CSF about 0.2).

    A label between grey and white matter in T1 sits at the same fraction between them in the
    other contrast; one between grey matter and CSF likewise.
    """
    wm, gm, csf = CONTRASTS[contrast]
    t1_wm, t1_gm, t1_csf = CONTRASTS["t1"]
    toward_wm = ((tissue_t1 - t1_gm) / (t1_wm - t1_gm)).clamp(0, 1)
    toward_csf = ((t1_gm - tissue_t1) / (t1_gm - t1_csf)).clamp(0, 1)
    return gm + toward_wm * (wm - gm) + toward_csf * (csf - gm)


def sampling_grid(shape, spacing: float, source_shape, generator, settings: HeadSynthesisSettings, centre) -> tuple[torch.Tensor, float]:
    """grid_sample coordinates ``[1, K, J, I, 3]`` of a randomly posed grid in the source volume, and its scale."""
    big = torch.rand((), generator=generator).item() < 0.1
    bound = 45.0 if big else settings.max_rotation
    angles = [_uniform(generator, -bound, bound) for _ in range(3)]
    scales = torch.tensor([1 + _uniform(generator, -settings.max_scale, settings.max_scale) for _ in range(3)])
    matrix = _rotation(angles) @ torch.diag(scales)
    shift = torch.tensor([_uniform(generator, -settings.max_shift, settings.max_shift) for _ in range(3)])
    axes = [(torch.arange(n, dtype=torch.float32) - (n - 1) / 2) * spacing for n in shape]
    points = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # [K, J, I, 3] mm about the centre, (k, j, i)
    moved = points @ matrix.T + shift + torch.as_tensor(centre, dtype=torch.float32)
    if settings.warp_mm > 0:
        warp = smooth_noise(shape, 3, max(2.0, 48.0 / spacing), generator)[0].permute(1, 2, 3, 0)
        moved = moved + warp / warp.abs().amax().clamp_min(1e-6) * _uniform(generator, 0, settings.warp_mm)
    size = torch.tensor(source_shape, dtype=torch.float32)
    normalised = 2 * moved / (size - 1) - 1  # (k, j, i) -> grid_sample wants (x=i, y=j, z=k)
    return normalised.flip(-1)[None], float(torch.prod(scales) ** (1 / 3))


def _thick_slices(image: torch.Tensor, generator) -> torch.Tensor:
    axis = int(torch.randint(0, 3, (), generator=generator))
    thickness = int(torch.randint(2, 5, (), generator=generator))
    kernel = [1, 1, 1]
    kernel[axis] = thickness
    size = image.shape[2:]
    pooled = F.avg_pool3d(image, kernel_size=kernel, stride=kernel, ceil_mode=True)
    return F.interpolate(pooled, size=size, mode="trilinear", align_corners=False)


def _lesions(image, distance, generator):
    inside = (distance[0, 0] < -8).nonzero()
    if inside.shape[0] == 0:
        return image
    shape = image.shape[2:]
    axes = [torch.arange(n, dtype=torch.float32) for n in shape]
    k, j, i = torch.meshgrid(*axes, indexing="ij")
    for _ in range(int(torch.randint(1, 4, (), generator=generator))):
        centre = inside[int(torch.randint(0, inside.shape[0], (), generator=generator))].float()
        radius = _uniform(generator, 2, 10)
        blob = ((k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2) / radius**2
        weight = torch.sigmoid((1 - blob) * 6)
        image = image * (1 - weight) + weight * _uniform(generator, 0, 1.2)
    return image


def render_head(labels: torch.Tensor, distance: torch.Tensor, tissue_t1: torch.Tensor, generator: torch.Generator, settings: HeadSynthesisSettings | None = None, contrast: str | None = None):
    """One training sample from a whole-head label map.

    ``labels`` ``[1, 1, K, J, I]`` float (label IDs), ``distance`` the same shape: the brain's signed
    distance in mm (negative inside), both in the map's 1 mm voxel frame. ``tissue_t1`` is a lookup
    table indexed by label ID: the label's T1 value (NaN where unknown: drawn at random). ``contrast`` forces "t1", "t2", "flair", "pd" or
    "random" (validation); None draws one.

    Returns ``(image, target, weight)``, each ``[1, 1, *settings.grid_size]``: the image in [0, 1],
    the signed distance in mm clipped to +-``distance_clip``, and the loss weight (0 outside the
    simulated field of view).
    """
    settings = settings or HeadSynthesisSettings()
    fine_shape = tuple(2 * n for n in settings.grid_size)
    centre = _brain_centre(distance)
    grid, scale = sampling_grid(fine_shape, settings.spacing / 2, labels.shape[2:], generator, settings, centre)
    fine_labels = F.grid_sample(labels, grid, mode="nearest", padding_mode="zeros", align_corners=True).long()
    coarse_grid = F.avg_pool3d(grid.permute(0, 4, 1, 2, 3), 2).permute(0, 2, 3, 4, 1)
    target = F.grid_sample(distance, coarse_grid, mode="bilinear", padding_mode="border", align_corners=True) * scale

    values = _label_values(tissue_t1, generator, contrast, settings)
    noise_std = torch.rand(values.shape, generator=generator) * 0.06
    image = values[fine_labels] + noise_std[fine_labels] * torch.randn(fine_labels.shape, generator=generator)
    if torch.rand((), generator=generator).item() < settings.lesions:
        fine_distance = F.interpolate(target, size=fine_shape, mode="trilinear", align_corners=False)
        image = _lesions(image, fine_distance, generator)
    image = gaussian_blur(image, _uniform(generator, 0.3, 1.0))
    if torch.rand((), generator=generator).item() < settings.thick_slices:
        image = _thick_slices(image, generator)
    image = image * bias_field(fine_shape, _uniform(generator, 0.0, 0.5), 64.0 / (settings.spacing / 2), generator)
    image = image.clamp_min(0) ** math.exp(0.3 * torch.randn((), generator=generator).item())
    image = image + _uniform(generator, 0.0, 0.05) * torch.randn(image.shape, generator=generator)
    image = F.avg_pool3d(image.clamp_min(0), 2)

    weight = torch.ones_like(target)
    if torch.rand((), generator=generator).item() < settings.fov_cut:
        axis = int(torch.randint(0, 3, (), generator=generator))
        n = settings.grid_size[axis]
        cut = int(_uniform(generator, 0.2, 0.45) * n)
        index = [slice(None)] * 5
        index[2 + axis] = slice(0, cut) if torch.rand((), generator=generator).item() < 0.5 else slice(n - cut, n)
        image[tuple(index)] = 0
        weight[tuple(index)] = 0
    return normalise_intensity(image), target.clamp(-settings.distance_clip, settings.distance_clip), weight


def normalise_intensity(image: torch.Tensor, within: torch.Tensor | None = None) -> torch.Tensor:
    """Clip at the 0.5th / 99.5th percentile (a strided sample; of the voxels ``within`` where given) and
    scale to [0, 1], as inference does."""
    sample = (image.flatten() if within is None else image[within]).flatten()[::3].float()
    low, high = torch.quantile(sample, 0.005), torch.quantile(sample, 0.995)
    return ((image - low) / (high - low).clamp_min(1e-6)).clamp(0, 1)


def _brain_centre(distance):
    inside = (distance[0, 0, ::4, ::4, ::4] < 0).nonzero().float() * 4  # every 4th voxel: plenty for a centre
    if inside.shape[0] == 0:
        return [(n - 1) / 2 for n in distance.shape[2:]]
    return inside.mean(0).tolist()


def _label_values(tissue_t1, generator, contrast, settings):
    count = tissue_t1.numel()
    values = torch.rand(count, generator=generator)
    if contrast is None:
        if torch.rand((), generator=generator).item() < settings.contrast_prior:
            contrast = ["t1", "t1", "t2", "flair", "pd"][int(torch.randint(0, 5, (), generator=generator))]
        else:
            contrast = "random"
    if contrast != "random":
        known = ~torch.isnan(tissue_t1)
        table = contrast_table(torch.nan_to_num(tissue_t1, nan=0.6), contrast)
        table = table + 0.06 * torch.randn(count, generator=generator)
        values = torch.where(known, table.clamp(0.02, 1.2), values)
    if torch.rand((), generator=generator).item() < 0.8:
        values[0] = 0.1 * torch.rand((), generator=generator).item()  # air: dark, as in almost every MRI
    return values
