"""A pair's files read and checked: the first stage of ``register`` (torch-free).

Torch-free on purpose: the command line reads the images while the registration engine (torch,
MONAI) is still being imported on another thread, and batch registration reads the next pairs on
a thread while the current one computes.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import SimpleITK as sitk

from .io import check_label_grid, read_label_image, read_volume


@dataclass
class PairImages:
    """The images of one pair, read and checked (:func:`read_pair`), and where they came from."""

    fixed: sitk.Image
    moving: sitk.Image
    moving_labels: sitk.Image | None
    fixed_labels: sitk.Image | None
    inputs: dict  # fixed, moving, moving_labels, fixed_labels: the paths as given (None where absent)
    seconds: float  # reading time


def read_pair(fixed_path, moving_path, moving_labels=None, fixed_labels=None) -> PairImages:
    """Read and check a pair's files (one-line errors naming the file).

    The files are read two at a time (ITK's reader and the zlib of the data check release
    Python's lock); where several are bad, the error named is that of the first in the order
    fixed, moving, moving labels, fixed labels, whichever finished first."""
    started = time.perf_counter()
    names = {"fixed": f"fixed image {fixed_path}", "moving": f"moving image {moving_path}",
             "moving_labels": f"moving labels {moving_labels}", "fixed_labels": f"fixed labels {fixed_labels}"}
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="read-pair") as pool:
        reads = {"fixed": pool.submit(read_volume, fixed_path, names["fixed"]), "moving": pool.submit(read_volume, moving_path, names["moving"])}
        for key, path in (("moving_labels", moving_labels), ("fixed_labels", fixed_labels)):
            if path:
                reads[key] = pool.submit(read_label_image, path, names[key], False)
        images = {key: future.result() for key, future in reads.items()}  # in order: the first bad file's error
    for key, image_key in (("moving_labels", "moving"), ("fixed_labels", "fixed")):
        if key in images:
            check_label_grid(images[key], images[image_key], names[key])
    inputs = {"fixed": str(fixed_path), "moving": str(moving_path), "moving_labels": moving_labels and str(moving_labels), "fixed_labels": fixed_labels and str(fixed_labels)}
    return PairImages(images["fixed"], images["moving"], images.get("moving_labels"), images.get("fixed_labels"), inputs, time.perf_counter() - started)
