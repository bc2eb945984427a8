"""Shared fixtures: small synthetic volumes with non-trivial geometry, and the shared data folder."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED_DATA = ROOT.parent / "shared" / "data"


def require_slicer_core():
    """The ``slicer`` package of Slicer's MRML (the ``slicer-core`` wheel); skips the calling module without it."""
    slicer = pytest.importorskip("slicer")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("slicer is not Slicer's MRML (slicer-core)", allow_module_level=True)
    return slicer


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def blob_volume(size=(40, 36, 32), spacing=(1.0, 1.0, 1.0), direction=None, origin=(0.0, 0.0, 0.0), seed=0) -> sitk.Image:
    """A smooth, asymmetric 'brain': ellipsoid with inner structures, zero background. size is (i, j, k)."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*(np.linspace(-1, 1, n) for n in size[::-1]), indexing="ij")
    body = ((i / 0.8) ** 2 + (j / 0.75) ** 2 + (k / 0.7) ** 2) < 1
    array = body * 0.4
    array = array + 0.5 * np.exp(-(((i - 0.3) / 0.2) ** 2 + ((j + 0.2) / 0.25) ** 2 + (k / 0.3) ** 2))
    array = array + 0.3 * np.exp(-(((i + 0.35) / 0.15) ** 2 + ((j - 0.3) / 0.2) ** 2 + ((k - 0.2) / 0.2) ** 2))
    array = array * body + 0.01 * rng.standard_normal(array.shape) * body
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(np.asarray(direction, dtype=float).flatten().tolist())
    return image


def blob_labels(image: sitk.Image) -> sitk.Image:
    """Labels 1..3 from intensity bands of a blob volume, on its grid."""
    array = sitk.GetArrayFromImage(image)
    labels = np.zeros(array.shape, np.int16)
    labels[array > 0.2] = 1
    labels[array > 0.55] = 2
    labels[array > 0.75] = 3
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(image)
    return out


@pytest.fixture
def oblique_image():
    return blob_volume(size=(36, 32, 28), spacing=(1.2, 0.9, 1.5), direction=rotation(0.3, -0.2, 0.5), origin=(10.0, -20.0, 5.0))


@pytest.fixture
def shared_data():
    if not (SHARED_DATA / "aseg" / "subj01_norm.nii.gz").exists():
        pytest.skip(f"shared data not found at {SHARED_DATA} (only on the development machines)")
    return SHARED_DATA


@pytest.fixture(params=["isal", "zlib"])
def gzip_library(request, monkeypatch):
    """Run a test with ISA-L's deflate and inflate (when the isal package is installed) and with
    Python's zlib, as inside Slicer where isal is not installed (image/gzip_streams.py)."""
    from VoxelMorphRegLib.image import gzip_streams

    if request.param == "isal":
        if gzip_streams.isal_zlib is None:
            pytest.skip("the isal package is not installed")
    else:
        monkeypatch.setattr(gzip_streams, "isal_zlib", None)
        monkeypatch.setattr(gzip_streams, "igzip", None)
    return request.param
