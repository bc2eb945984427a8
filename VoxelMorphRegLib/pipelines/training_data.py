"""Training data: subjects on the model grid, and the random pairs the training loop learns from.

Subjects come from a folder or a CSV (see :mod:`.training_sources`). Each is brought onto the
model grid of an atlas by the same preprocessing as ``register`` (affine alignment to the atlas,
resampling, intensity normalisation) and cached. Whole-head label maps are kept whole on the
grid; the skull is stripped (or not) when an image is drawn.

The recipe: which loss applies to which pair (see docs/TRAINING.md, "Training recipe")
- ``synthetic``: two label-only subjects, each rendered with its own contrast and deformation:
  Dice over the brain structures + smoothness, no image similarity (the images' contrasts are
  unrelated by construction).
- ``real``: two subjects with real images: LNCC + smoothness, plus Dice when both have labels.
- ``mixed``: a real image with a synthetic one only when both sides have labels: Dice +
  smoothness.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
import torch.distributed as dist
from monai.data import IterableDataset
from torch.utils.data import get_worker_info

from ..contract import Progress, no_events
from ..errors import VoxelMorphRegError
from ..freesurfer_labels import EXTRA_CEREBRAL_CSF, T1_INTENSITY
from ..image.affine import affine_register
from ..image.io import atomic_path, read_labels, read_volume
from ..image.preprocessing import grid_for, image_on_grid, labels_on_grid
from ..tensor.synthesis import corrupt_intensity, image_from_labels, random_affine_flow, random_deformation
from ..tensor.warping import compose, resize_flow, warp
from .training_sources import SubjectSource

# Version of what the cache holds; bump when preparation changes (v2: whole-head labels, brain-guided
# alignment; v3: the affine that keeps only a stage better than its start: v2 had map02 misaligned, Dice 0.04).
CACHE_VERSION = 3


@dataclass
class Subject:
    name: str
    image: np.ndarray | None  # [K, J, I] float32 on the model grid, None for label-only subjects
    labels: np.ndarray | None  # [K, J, I] int32 on the model grid (whole head where the map has it)


def skull_stripped(labels):
    """Labels of a skull-stripped brain: extra-cerebral labels (IDs >= 100 except the corpus
    callosum 251-255, and the extra-cerebral CSF 24) become background. NumPy or torch."""
    outside = ((labels >= 100) & ((labels < 251) | (labels > 255))) | (labels == EXTRA_CEREBRAL_CSF)
    if isinstance(labels, torch.Tensor):
        return torch.where(outside, torch.zeros_like(labels), labels)
    return np.where(outside, 0, labels)


def _pseudo_image(labels: sitk.Image) -> sitk.Image:
    """A rough T1-like image of the brain only (the atlas is skull-stripped), used to align a label-only subject."""
    array = skull_stripped(sitk.GetArrayFromImage(labels))
    lookup = np.vectorize(lambda v: T1_INTENSITY.get(int(v), 0.5 if v else 0.0), otypes=[np.float32])
    values = np.unique(array)
    image = lookup(values)[np.searchsorted(values, array)]
    out = sitk.GetImageFromArray(image.astype(np.float32))
    out.CopyInformation(labels)
    return out


def prepare_subject(source: SubjectSource, atlas: sitk.Image, config, cache, skull_strip: bool, align: bool = True, log=print) -> Subject:
    """Load, align to the atlas and bring one subject onto the model grid (cached on disk)."""
    files = [(path, os.stat(path).st_size, os.stat(path).st_mtime_ns) if path and os.path.exists(path) else path for path in (source.image, source.labels)]
    atlas_geometry = [atlas.GetSize(), atlas.GetOrigin(), atlas.GetSpacing(), atlas.GetDirection(), float(sitk.GetArrayViewFromImage(atlas).sum())]
    key_data = [CACHE_VERSION, files, config.spacing, config.orientation, config.intensity, config.encoder_features, skull_strip, align, atlas_geometry]
    key = hashlib.sha1(json.dumps(key_data, default=str).encode()).hexdigest()[:16]
    cached = cache / f"{source.name}-{key}.npz" if cache else None
    if cached and cached.exists():
        data = np.load(cached)
        return Subject(source.name, data["image"] if "image" in data else None, data["labels"] if "labels" in data else None)
    started = time.perf_counter()
    image = read_volume(source.image) if source.image else None
    labels = read_labels(source.labels, reference=image) if source.labels else None
    if labels is not None and skull_strip:
        stripped = sitk.GetImageFromArray(skull_stripped(sitk.GetArrayFromImage(labels)))
        stripped.CopyInformation(labels)
        labels = stripped
    guide = image if image is not None else _pseudo_image(labels)
    transform = affine_register(atlas, guide) if align else None
    grid = grid_for(atlas, config)
    payload = {}
    if image is not None:
        payload["image"] = image_on_grid(image, grid, transform, config)
    if labels is not None:
        payload["labels"] = labels_on_grid(labels, grid, transform)
    if cached:
        cache.mkdir(parents=True, exist_ok=True)
        with atomic_path(cached) as temporary:  # several processes may prepare the same subject
            with open(temporary, "wb") as handle:
                np.savez_compressed(handle, **payload)
    log(f"prepared {source.name} in {time.perf_counter() - started:.1f} s")
    return Subject(source.name, payload.get("image"), payload.get("labels"))


def prepare_all(sources, atlas_path, config, cache, skull_strip, align=True, log=print, events=no_events) -> list[Subject]:
    """Every source prepared (see :func:`prepare_subject`); ``events`` gets a ``Progress`` per subject."""
    atlas = read_volume(atlas_path)
    subjects = []
    for number, source in enumerate(sources, start=1):
        started = time.perf_counter()
        subjects.append(prepare_subject(source, atlas, config, cache, skull_strip, align, log))
        events(Progress("prepare", number, len(sources), None, None, f"prepared {source.name} in {time.perf_counter() - started:.1f} s"))
    return subjects


@dataclass
class PairRecipe:
    """How pairs are drawn and rendered (see the module docstring for the losses of each kind)."""

    augment_voxels: float = 3.0  # largest random smooth displacement, model-grid voxels
    synthetic_fraction: float = 0.7  # share of synthetic pairs when both synthetic and real pairs exist
    whole_head_fraction: float = 0.5  # share of synthetic pairs rendered with the extra-cerebral labels kept
    t1_fraction: float = 0.5  # share of synthetic pairs with T1-like contrast (the rest: random contrast)
    affine_degrees: float = 3.0  # random affine of the augmentation: rotation, scaling, shift (voxels)
    affine_scale: float = 0.03
    affine_shift: float = 1.5


class TrainingPairs(IterableDataset):
    """Endless random (moving, fixed) pairs, augmented on the fly (a MONAI iterable dataset).

    Under a ``DataLoader`` with worker processes each worker draws its own stream (seeded by
    ``seed``, the worker id and the distributed rank), so synthesis and augmentation run beside
    the training step. Items are dicts of CPU tensors ``[1, 1, K, J, I]`` (labels ``None`` where
    a subject has none) and ``kind``: ``synthetic``, ``real`` or ``mixed``. With ``atlas`` every
    pair registers a subject to the atlas, which is kept as it is.
    """

    def __init__(self, subjects: list[Subject], recipe: PairRecipe | None = None, seed: int = 0, augment: bool = True, atlas: Subject | None = None):
        super().__init__(data=subjects)
        if len(subjects) < (1 if atlas is not None else 2):
            raise VoxelMorphRegError("training needs at least two subjects (or one and --pairs to-atlas)")
        self.subjects = subjects
        self.recipe = recipe or PairRecipe()
        self.seed = seed
        self.augment = augment
        self.atlas = atlas
        self.synthetic = [s for s in subjects if s.image is None]
        self.real = [s for s in subjects if s.image is not None]
        labelled = [s for s in subjects if s.labels is not None]
        if atlas is None and len(self.synthetic) < 2 and len(self.real) < 2 and not (len(labelled) >= 2):
            raise VoxelMorphRegError("training needs two subjects of one kind: two label maps, two images, or two labelled subjects")

    def _kind(self, generator) -> str:
        has_synthetic, has_real = len(self.synthetic) >= 2, len(self.real) >= 2
        if has_synthetic and has_real:
            return "synthetic" if float(torch.rand((), generator=generator)) < self.recipe.synthetic_fraction else "real"
        if has_synthetic:
            return "synthetic"
        if has_real:
            return "real"
        return "mixed"  # only labelled subjects of both kinds

    def _deformation(self, shape, generator):
        recipe = self.recipe
        half = [max(2, n // 2) for n in shape]
        # drawn and integrated on a half-resolution grid (it is smooth), then upsampled
        flow, _ = random_deformation(half, recipe.augment_voxels / 2, control_spacing=8.0, generator=generator, inverse=False)
        flow = resize_flow(flow, shape)
        if recipe.affine_degrees > 0 or recipe.affine_scale > 0 or recipe.affine_shift > 0:
            flow = compose(flow, random_affine_flow(shape, recipe.affine_degrees, recipe.affine_scale, recipe.affine_shift, generator))
        return flow

    def draw(self, subject: Subject, generator: torch.Generator, augment: bool | None = None, whole_head: bool = False, t1: bool = False):
        """One augmented ``(image, labels)`` of a subject; label-only subjects are rendered after deforming their labels."""
        augment = self.augment if augment is None else augment
        labels = None if subject.labels is None else torch.from_numpy(np.ascontiguousarray(subject.labels))[None, None]
        shape = (subject.labels if subject.image is None else subject.image).shape
        flow = self._deformation(shape, generator) if augment and self.recipe.augment_voxels > 0 else None
        if flow is not None and labels is not None:
            labels = warp(labels.float(), flow, mode="nearest").long()
        if subject.image is None:
            rendered = labels if whole_head else skull_stripped(labels)
            image = image_from_labels(rendered, generator=generator, label_means=T1_INTENSITY if t1 else None, zero_background=t1 and not whole_head)
        else:
            image = torch.from_numpy(np.ascontiguousarray(subject.image))[None, None]
            if augment:
                image = corrupt_intensity(image, generator=generator)
            if flow is not None:
                image = warp(image, flow)
        return image, labels

    def _pick(self, pool, generator, count):
        order = torch.randperm(len(pool), generator=generator)[:count].tolist()
        return [pool[i] for i in order]

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None:
            torch.set_num_threads(1)
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        generator = torch.Generator().manual_seed(self.seed + 1000 * worker + 100_000 * rank)
        recipe = self.recipe
        while True:
            whole_head = float(torch.rand((), generator=generator)) < recipe.whole_head_fraction
            t1 = float(torch.rand((), generator=generator)) < recipe.t1_fraction
            if self.atlas is not None:
                (subject,) = self._pick(self.subjects, generator, 1)
                moving, moving_labels = self.draw(subject, generator, whole_head=whole_head, t1=t1)
                fixed, fixed_labels = self.draw(self.atlas, generator, augment=False, whole_head=whole_head, t1=t1)
                kind = "real" if subject.image is not None and self.atlas.image is not None else ("synthetic" if subject.image is None and self.atlas.image is None else "mixed")
            else:
                kind = self._kind(generator)
                if kind == "synthetic":
                    a, b = self._pick(self.synthetic, generator, 2)
                elif kind == "real":
                    a, b = self._pick(self.real, generator, 2)
                else:
                    a, b = self._pick([s for s in self.subjects if s.labels is not None], generator, 2)
                moving, moving_labels = self.draw(a, generator, whole_head=whole_head, t1=t1)
                fixed, fixed_labels = self.draw(b, generator, whole_head=whole_head, t1=t1)
            if kind == "mixed" and (moving_labels is None or fixed_labels is None):
                continue  # a real image beside a synthetic one needs labels on both sides
            yield {"moving": moving, "fixed": fixed, "moving_labels": moving_labels, "fixed_labels": fixed_labels, "kind": kind}


def validation_pairs(subjects: list[Subject], seed: int, recipe: PairRecipe | None = None) -> list[dict]:
    """Fixed validation pairs, every ordered pair of labelled validation subjects.

    Label-only subjects are rendered with a T1-like intensity per structure (what real use
    looks like, not random contrast), once skull-stripped and once whole-head, with a fixed
    seed and one fixed random deformation each, so every validation sees the same pairs.
    Subjects with real images are used as they are. Returns dicts with ``variant``
    (``skull-stripped`` or ``whole-head``), images and labels ``[1, 1, K, J, I]``.
    """
    generator = torch.Generator().manual_seed(seed + 1)
    sampler = TrainingPairs(subjects, recipe or PairRecipe(), seed, augment=True) if len(subjects) >= 2 else None
    pairs = []
    labelled = [s for s in subjects if s.labels is not None]
    variants = ["skull-stripped", "whole-head"] if any(s.image is None for s in labelled) else ["skull-stripped"]
    for variant in variants:
        drawn = []
        for subject in labelled:
            if subject.image is not None and variant == "whole-head":
                continue
            if sampler is not None and subject.image is None:
                image, labels = sampler.draw(subject, generator, whole_head=variant == "whole-head", t1=True)
            else:
                labels = torch.from_numpy(subject.labels)[None, None]
                image = torch.from_numpy(subject.image)[None, None] if subject.image is not None else image_from_labels(labels, generator=generator, label_means=T1_INTENSITY)
            drawn.append((subject.name, image, labels))
        pairs += [{"variant": variant, "moving": m, "fixed": f} for m in drawn for f in drawn if m[0] != f[0]]
    return pairs
