"""Random smooth deformations and image corruptions, for augmentation, synthetic training and the demo.

Everything here is pure PyTorch on ``[B, C, K, J, I]`` tensors and takes a ``torch.Generator``
so that a seed reproduces the same sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .integration import integrate_velocity


def smooth_noise(shape, channels: int, control_spacing: float, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Gaussian noise on a coarse grid (one value per ``control_spacing`` voxels), upsampled smoothly."""
    coarse = [max(2, int(round(n / control_spacing)) + 1) for n in shape]
    noise = torch.randn((1, channels, *coarse), generator=generator, device=device)
    return F.interpolate(noise, size=tuple(shape), mode="trilinear", align_corners=True)


def random_velocity(shape, max_displacement: float, control_spacing: float = 16.0, generator=None, device=None) -> torch.Tensor:
    """A smooth random velocity field ``[1, 3, ...]`` whose integral moves voxels up to about ``max_displacement``."""
    velocity = smooth_noise(shape, 3, control_spacing, generator, device)
    peak = velocity.abs().amax().clamp_min(1e-6)
    return velocity * (max_displacement / peak)


def random_deformation(shape, max_displacement: float, control_spacing: float = 16.0, steps: int = 7, generator=None, device=None, inverse: bool = True):
    """A random diffeomorphism: ``(flow, inverse_flow)`` in voxel units, both ``[1, 3, ...]``;
    with ``inverse=False`` the inverse is not integrated (``None``: half the work)."""
    velocity = random_velocity(shape, max_displacement, control_spacing, generator, device)
    return integrate_velocity(velocity, steps), (integrate_velocity(-velocity, steps) if inverse else None)


def bias_field(shape, strength: float = 0.3, control_spacing: float = 32.0, generator=None, device=None) -> torch.Tensor:
    """A smooth multiplicative field ``exp(strength * noise)`` around 1."""
    return torch.exp(strength * smooth_noise(shape, 1, control_spacing, generator, device))


def gamma_intensity(image: torch.Tensor, log_gamma_std: float = 0.25, generator=None) -> torch.Tensor:
    """Random gamma curve on an image scaled to [0, 1]."""
    gamma = torch.exp(torch.randn((), generator=generator, device=image.device) * log_gamma_std)
    return image.clamp_min(0) ** gamma


def add_noise(image: torch.Tensor, std: float, generator=None) -> torch.Tensor:
    return image + std * torch.randn(image.shape, generator=generator, device=image.device)


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur in voxels (``sigma <= 0`` returns the image)."""
    if sigma <= 0:
        return image
    radius = max(1, int(round(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = image
    channels = image.shape[1]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        weight = kernel.view(shape).repeat(channels, 1, 1, 1, 1)
        padding = [0, 0, 0]
        padding[axis] = radius
        out = F.conv3d(out, weight, padding=tuple(padding), groups=channels)
    return out


def rescale(image: torch.Tensor) -> torch.Tensor:
    low, high = image.amin(), image.amax()
    return (image - low) / (high - low).clamp_min(1e-6)


def image_from_labels(labels: torch.Tensor, generator=None, background_labels=(0,), blur_sigma: float = 0.7, noise_std: float = 0.03, bias_strength: float = 0.3, label_means: dict | None = None, mean_jitter: float = 0.06, zero_background: bool = False) -> torch.Tensor:
    """A synthetic image of a label map ``[B, 1, ...]``: one intensity per label, blurred, biased and noisy, in [0, 1].

    Without ``label_means`` every label gets a uniformly random intensity (SynthMorph: the
    network cannot rely on contrast). With ``label_means`` (label ID -> typical intensity, e.g.
    T1-weighted), listed labels get that value plus ``N(0, mean_jitter)`` and a random gamma
    curve; labels not listed still get random values. ``zero_background`` keeps background
    voxels at exactly 0, as in skull-stripped images.
    """
    values, index = torch.unique(labels, return_inverse=True)
    means = torch.rand(values.numel(), generator=generator, device=labels.device)
    if label_means:
        known = torch.tensor([int(v) in label_means for v in values.tolist()], device=labels.device)
        table = torch.tensor([float(label_means.get(int(v), 0.0)) for v in values.tolist()], device=labels.device)
        jitter = mean_jitter * torch.randn(values.numel(), generator=generator, device=labels.device)
        means = torch.where(known, (table + jitter).clamp(0.02, 1.0), means)
    for background in background_labels:
        means = torch.where(values == background, torch.zeros_like(means), means)
    stds = 0.05 * torch.rand(values.numel(), generator=generator, device=labels.device)
    image = means[index] + stds[index] * torch.randn(labels.shape, generator=generator, device=labels.device)
    image = gaussian_blur(image.float(), blur_sigma)
    image = image * bias_field(labels.shape[2:], bias_strength, generator=generator, device=labels.device)
    image = add_noise(image, noise_std, generator)
    if label_means:
        image = gamma_intensity(image.clamp_min(0), generator=generator)
    if zero_background:
        foreground = torch.ones_like(image, dtype=torch.bool)
        for background in background_labels:
            foreground &= labels != background
        image = image * foreground
    if label_means:
        # what ``register`` does to real images: clip at the 0.5th and 99.5th percentiles, scale to [0, 1]
        sample = image.flatten()[::7].float()
        low, high = torch.quantile(sample, 0.005), torch.quantile(sample, 0.995)
        return ((image - low) / (high - low).clamp_min(1e-6)).clamp(0, 1)
    return rescale(image).clamp(0, 1)


def random_affine_flow(shape, degrees: float, scale: float, shift: float, generator=None, device=None) -> torch.Tensor:
    """Flow ``[1, 3, ...]`` (voxel units) of a random affine map about the grid centre.

    Rotations up to ``degrees`` about each axis, scaling by up to ``1 +- scale`` per axis and
    a shift of up to ``shift`` voxels, each uniform: a stand-in for what an affine
    pre-alignment leaves behind.
    """
    def uniform(n, bound):
        return (2 * torch.rand(n, generator=generator) - 1) * bound

    angles = torch.deg2rad(uniform(3, degrees))
    c, s = torch.cos(angles), torch.sin(angles)
    rx = torch.tensor([[1, 0, 0], [0, c[0], -s[0]], [0, s[0], c[0]]])
    ry = torch.tensor([[c[1], 0, s[1]], [0, 1, 0], [-s[1], 0, c[1]]])
    rz = torch.tensor([[c[2], -s[2], 0], [s[2], c[2], 0], [0, 0, 1]])
    matrix = rx @ ry @ rz @ torch.diag(1 + uniform(3, scale))
    centre = torch.tensor([(n - 1) / 2 for n in shape], dtype=torch.float32)
    axes = [torch.arange(n, dtype=torch.float32) - centre[d] for d, n in enumerate(shape)]
    points = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0).reshape(3, -1)
    moved = (matrix - torch.eye(3)) @ points + uniform(3, shift)[:, None]
    return moved.reshape(1, 3, *shape).to(device)


def corrupt_intensity(image: torch.Tensor, generator=None, bias_strength: float = 0.2, noise_std: float = 0.02) -> torch.Tensor:
    """Gamma, bias field and noise on an image in [0, 1], keeping the background at zero."""
    foreground = (image > 0).float()
    out = gamma_intensity(image, generator=generator)
    out = out * bias_field(image.shape[2:], bias_strength, generator=generator, device=image.device)
    out = add_noise(out, noise_std, generator) * foreground
    return out.clamp(0, 1)
