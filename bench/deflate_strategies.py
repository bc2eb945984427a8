"""Seconds and bytes of deflating a register's outputs with ISA-L and zlib's strategies (one thread each).

    python bench/deflate_strategies.py OUT_FOLDER_OF_A_REGISTER

Behind the choice of ISA-L level 1, and of zlib's Z_RLE without ISA-L, in
``VoxelMorphRegLib/image/gzip_streams.py``: each output's voxel data (the fields as float32, as
they are written) is deflated into a gzip stream by ISA-L at levels 0-2 (when the ``isal`` package
is installed) and by zlib at level 1 with the default strategy, with Z_RLE and with Z_HUFFMAN_ONLY,
and at level 6; median of 3. Run it on a quiet machine.
"""

from __future__ import annotations

import statistics
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

try:
    from isal import isal_zlib
except ImportError:
    isal_zlib = None


def _zlib(level, strategy):
    return lambda: zlib.compressobj(level, zlib.DEFLATED, 31, 8, strategy)


def _isal(level):
    return lambda: isal_zlib.compressobj(level, isal_zlib.DEFLATED, 31)


CHOICES = ([(f"ISA-L level {level}" + (" (written)" if level == 1 else ""), _isal(level)) for level in (0, 1, 2)] if isal_zlib else []) + [
    ("zlib level 1, default strategy", _zlib(1, zlib.Z_DEFAULT_STRATEGY)), ("zlib level 1, Z_RLE" + ("" if isal_zlib else " (written)"), _zlib(1, zlib.Z_RLE)),
    ("zlib level 1, Z_HUFFMAN_ONLY", _zlib(1, zlib.Z_HUFFMAN_ONLY)), ("zlib level 6, default strategy", _zlib(6, zlib.Z_DEFAULT_STRATEGY))]


def deflate(data: bytes, make_compressor) -> int:
    compressor = make_compressor()
    size = 0
    for start in range(0, len(data), 1 << 22):
        size += len(compressor.compress(data[start:start + (1 << 22)]))
    return size + len(compressor.flush())


def main(argv=None) -> int:
    folder = Path((argv or sys.argv[1:])[0])
    print(f"outputs of {folder}")
    print(f"{'file':28s} {'MB raw':>7s}  {'choice':32s} {'seconds':>8s} {'MB':>7s}")
    for name in ("warped.nii.gz", "displacement.nii.gz", "inverse_displacement.nii.gz", "jacobian.nii.gz", "warped_labels.nii.gz"):
        path = folder / name
        if not path.exists():
            continue
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))  # a copy: a view of a temporary image would be freed
        if "displacement" in name:
            array = array.astype(np.float32)
        data = np.ascontiguousarray(array).tobytes()
        for label, make_compressor in CHOICES:
            times = []
            for _ in range(3):
                started = time.perf_counter()
                size = deflate(data, make_compressor)
                times.append(time.perf_counter() - started)
            print(f"{name:28s} {len(data) / 1e6:7.1f}  {label:32s} {statistics.median(times):8.3f} {size / 1e6:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
