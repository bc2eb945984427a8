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


def random_deformation(shape, max_displacement: float, control_spacing: float = 16.0, steps: int = 7, generator=None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """A random diffeomorphism: ``(flow, inverse_flow)`` in voxel units, both ``[1, 3, ...]``."""
    velocity = random_velocity(shape, max_displacement, control_spacing, generator, device)
    return integrate_velocity(velocity, steps), integrate_velocity(-velocity, steps)


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


def image_from_labels(labels: torch.Tensor, generator=None, background_labels=(0,), blur_sigma: float = 0.7, noise_std: float = 0.03, bias_strength: float = 0.3) -> torch.Tensor:
    """A SynthMorph-style image: one random intensity per label, blurred, biased and noisy, in [0, 1]."""
    values, index = torch.unique(labels, return_inverse=True)
    means = torch.rand(values.numel(), generator=generator, device=labels.device)
    for background in background_labels:
        means = torch.where(values == background, torch.zeros_like(means), means)
    stds = 0.05 * torch.rand(values.numel(), generator=generator, device=labels.device)
    image = means[index] + stds[index] * torch.randn(labels.shape, generator=generator, device=labels.device)
    image = gaussian_blur(image.float(), blur_sigma)
    image = image * bias_field(labels.shape[2:], bias_strength, generator=generator, device=labels.device)
    image = add_noise(image, noise_std, generator)
    return rescale(image).clamp(0, 1)


def corrupt_intensity(image: torch.Tensor, generator=None, bias_strength: float = 0.2, noise_std: float = 0.02) -> torch.Tensor:
    """Gamma, bias field and noise on an image in [0, 1], keeping the background at zero."""
    foreground = (image > 0).float()
    out = gamma_intensity(image, generator=generator)
    out = out * bias_field(image.shape[2:], bias_strength, generator=generator, device=image.device)
    out = add_noise(out, noise_std, generator) * foreground
    return out.clamp(0, 1)
