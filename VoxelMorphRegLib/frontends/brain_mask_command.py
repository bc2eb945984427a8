"""``voxelmorphreg brain-mask INPUT --out MASK [--stripped FILE] [--model FILE]``: the brain mask of one scan.

The mask is uint8 (1 inside) on the input's own grid; ``--stripped`` also writes the scan with
everything outside the mask set to its background, in the scan's own pixel type. Both are written
atomically; a bad input, output or model file is a one-line error.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..contract import Done, Stage
from ..errors import VoxelMorphRegError


def add_parser(sub, add_common):
    p = sub.add_parser("brain-mask", help="the brain mask of a head scan (any contrast), with the bundled brain extraction network")
    p.add_argument("input", help="head scan: NIfTI, NRRD, MHA or a DICOM folder")
    p.add_argument("--out", required=True, metavar="MASK", help="mask file to write (uint8, 1 inside, on the input's grid), e.g. mask.nii.gz")
    p.add_argument("--stripped", metavar="FILE", help="also write the scan with everything outside the brain removed")
    p.add_argument("--model", metavar="FILE", help="brain mask model file (default: the bundled one)")
    p.add_argument("--auto", action="store_true", help="keep an already skull-stripped scan's own foreground instead of running the network")
    add_common(p)


def _checked_output(path: str) -> Path:
    out = Path(path)
    if out.is_dir():
        raise VoxelMorphRegError(f"{out}: is a folder; give a file name such as {out / 'mask.nii.gz'}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise VoxelMorphRegError(f"{out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise VoxelMorphRegError(f"{out}: folder {parent} is not writable")
    return out


def run(args, log, events):
    from ..image.io import atomic_path, read_volume

    import SimpleITK as sitk

    outputs = [_checked_output(args.out)] + ([_checked_output(args.stripped)] if args.stripped else [])
    log("[  0%] reading the image")
    events(Stage("read", 0, "reading the image"))
    image = read_volume(args.input, keep_type=True)
    from ..pipelines.brain_mask import brain_mask, stripped_image

    log("[ 20%] brain mask")
    events(Stage("brain_mask", 20, "brain mask"))
    result = brain_mask(sitk.Cast(image, sitk.sitkFloat32), "auto" if args.auto else "network", args.model)
    log(f"[ 90%] writing ({result.source}: {result.volume_ml:.0f} mL in {result.seconds:.2f} s)")
    events(Stage("write", 90, "writing"))
    written = []
    for path, picture in [(outputs[0], result.mask)] + ([(outputs[1], stripped_image(image, result.mask))] if args.stripped else []):
        with atomic_path(path) as temporary:
            sitk.WriteImage(picture, temporary, True)
        written.append(str(path))
    log(f"done: {', '.join(written)}")
    events(Done(str(outputs[0].parent), written, round(result.seconds, 3), {"volume_ml": round(result.volume_ml, 1), "source": result.source}))
