"""gzip streams for the image layer: ISA-L's deflate and inflate where the ``isal`` package is
installed (a dependency of the command line), Python's zlib otherwise (inside Slicer, whose
hand-off files are not compressed).

Both write and read ordinary gzip streams (RFC 1952): every reader of ``.nii.gz`` reads what
either writes. Measured on a 160x192x224 register's displacement field (82.6 MB as float32) on
the quiet 2-core AMD CPU, at level 1: ISA-L 0.22 s into 44.5 MB, zlib with ``Z_RLE`` 0.87 s into
50.3 MB, zlib's default strategy 1.38 s into 45.0 MB; all five outputs 0.50 s with ISA-L against
2.19 s with zlib ``Z_RLE`` (``python bench/deflate_strategies.py``,
bench/results/deflate-strategies-2026-12-04-epyc.txt). ISA-L inflated a 160x192x224 T1 volume
(``subj01_norm.nii.gz``) in 0.012 s against Python's gzip's 0.046 s (timed ad hoc, once).
"""

from __future__ import annotations

import gzip
import zlib

try:
    from isal import igzip, isal_zlib
except ImportError:  # not installed: Python's zlib
    igzip = isal_zlib = None

DEFAULT_LEVEL = 1  # deflate level: ISA-L takes 0-3, zlib 0-9

# Errors of a corrupt compressed stream, whichever library reads it (a truncated one raises EOFError).
STREAM_ERRORS: tuple = (zlib.error, gzip.BadGzipFile) + ((isal_zlib.error,) if isal_zlib is not None else ())


def gzip_compressor(level: int = DEFAULT_LEVEL):
    """A compressor (``compress``, ``flush``) writing one gzip stream at deflate ``level``: ISA-L's
    when it is installed, else zlib's with the ``Z_RLE`` strategy. ISA-L's levels are 0-3 (a level
    above 3 is taken as 3, below 0 as 0) and its level 0 still compresses (its fastest), where
    zlib's level 0 stores the bytes as they are."""
    if isal_zlib is not None:
        return isal_zlib.compressobj(max(0, min(level, 3)), isal_zlib.DEFLATED, 16 + isal_zlib.MAX_WBITS)  # 16 + 15: a gzip stream
    return zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS, 8, zlib.Z_RLE)


def open_gzip(path):
    """A binary reader of the decompressed bytes of gzip file ``path`` (checks its CRC and length at the end)."""
    return igzip.open(path, "rb") if igzip is not None else gzip.open(path, "rb")
