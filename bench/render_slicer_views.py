"""Pictures of the slice views as Slicer draws them after a registration, for the README.

By default (``--pair clinical``) two real whole-head T1 scans as a clinician would load them
(``../shared/data/clinical``: niivue_t1_head as the fixed scan, BSD-2-Clause; brainchop_t1 as the
moving one with its white matter as the segmentation, MIT), registered brain to brain with the
module's default Brain mask option, the fixed brain mask outlined. ``--pair aseg``: a real
registration of two aseg subjects (default subj02 onto subj01) through the module's logic
(``VoxelMorphRegLogic.register`` from VoxelMorphReg.py on slicer-core, the application stood in
for by ``Testing/Python/slicer_app_fakes``; the engine runs in its own process) with the bundled
model and its default settings; the moving subject's deep structures go along as a segmentation.
The views are then rendered offscreen by Slicer's own slice pipeline
(``Testing/Python/slice_rendering``: slice and layer logics, the segmentation displayable
manager, VTK through EGL: no X server) exactly as the module leaves them: fixed volume behind,
warped volume in front at 50 %, warped segmentation as outlines, views fitted. It writes

* ``Resources/Screenshots/VoxelMorphReg_views.png``: the Red, Yellow and Green views side by side;
* ``Resources/Screenshots/VoxelMorphReg_fade.gif``: the module's Fixed / warped fade from 0 (the
  fixed volume) to 1 (the warped one), the outline staying where it is.

Run from the repository root (a minute or two on a 2-core CPU)::

    python bench/render_slicer_views.py                       # ../shared/data/aseg, subj02 onto subj01
    python bench/render_slicer_views.py --out-dir /tmp/pics   # somewhere else
    python bench/render_slicer_views.py --synthetic --model none --out-dir /tmp/pics   # no data: checks the script

Without the data it prints one line and exits 0; without offscreen rendering (on Debian:
``apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri``) or without the engine's packages, one
line and exit 1.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTING = ROOT / "Testing" / "Python"
for path in (ROOT, TESTING):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "aseg"
DEFAULT_OUT = ROOT / "Resources" / "Screenshots"
VIEWS = ("Red", "Yellow", "Green")
VIEW_COLORS = {"Red": (243, 128, 128), "Yellow": (237, 213, 103), "Green": (110, 176, 75)}  # Slicer's view bar colours

# Deep structures of FreeSurfer's aseg, with FreeSurferColorLUT's names and colours: outlines that
# stay readable (cortex and white matter outlines would cover the whole brain).
CLINICAL_STRUCTURES = {2: ("White matter", (245, 245, 245))}  # the clinical pair's moving segmentation (brainchop_gm_wm: 2 = WM)
DEEP_STRUCTURES = {
    4: ("Left-Lateral-Ventricle", (120, 18, 134)), 43: ("Right-Lateral-Ventricle", (120, 18, 134)),
    10: ("Left-Thalamus", (0, 118, 14)), 49: ("Right-Thalamus", (0, 118, 14)),
    11: ("Left-Caudate", (122, 186, 220)), 50: ("Right-Caudate", (122, 186, 220)),
    12: ("Left-Putamen", (236, 13, 176)), 51: ("Right-Putamen", (236, 13, 176)),
    13: ("Left-Pallidum", (12, 48, 255)), 52: ("Right-Pallidum", (13, 48, 255)),
    17: ("Left-Hippocampus", (220, 216, 20)), 53: ("Right-Hippocampus", (220, 216, 20)),
    18: ("Left-Amygdala", (103, 255, 255)), 54: ("Right-Amygdala", (103, 255, 255)),
    16: ("Brain-Stem", (119, 159, 176)),
}


class _Patch:
    """What ``slicer_app_fakes.install`` needs of pytest's monkeypatch, for the life of this process."""

    def setattr(self, target, name, value, raising=True):
        if raising and not hasattr(target, name):
            raise AttributeError(name)
        setattr(target, name, value)

    def setitem(self, mapping, key, value):
        mapping[key] = value


def _say(text: str) -> None:
    print(f"render_slicer_views: {text}", flush=True)


def _inputs(args):
    """(fixed, fixed labels, moving, moving labels) as SimpleITK images, or None (said why) without the data."""
    import numpy as np
    import SimpleITK as sitk

    if args.synthetic:
        from conftest import blob_labels, blob_volume, rotation

        fixed = blob_volume(size=(64, 60, 56), spacing=(1.5, 1.5, 1.5), seed=0)
        moving = blob_volume(size=(64, 60, 56), spacing=(1.55, 1.45, 1.5), direction=rotation(0.1, 0.0, 0.05), origin=(3.0, -2.0, 1.0), seed=1)
        return fixed, blob_labels(fixed), moving, blob_labels(moving)
    if args.pair == "clinical":
        clinical = ROOT.parent / "shared" / "data" / "clinical"
        paths = [clinical / "niivue_t1_head.nii.gz", clinical / "brainchop_t1.nii.gz", clinical / "brainchop_gm_wm.nii.gz"]
        missing = [p for p in paths if not p.exists()]
        if missing:
            _say(f"skipped: no data at {clinical} ({missing[0].name} missing; --synthetic checks the script without it)")
            return None
        fixed, moving, tissues = (sitk.ReadImage(str(p)) for p in paths)
        white = sitk.GetImageFromArray((sitk.GetArrayFromImage(tissues) == 2).astype(np.int16) * 2)  # white matter only: readable outlines
        white.CopyInformation(tissues)
        return sitk.Cast(fixed, sitk.sitkFloat32), None, sitk.Cast(moving, sitk.sitkFloat32), white
    data = Path(args.data)
    paths = [data / f"{args.fixed}_norm.nii.gz", data / f"{args.fixed}_seg.nii.gz", data / f"{args.moving}_norm.nii.gz", data / f"{args.moving}_seg.nii.gz"]
    missing = [p for p in paths if not p.exists()]
    if missing:
        _say(f"skipped: no data at {data} ({missing[0].name} missing; --synthetic checks the script without it)")
        return None
    fixed, fixed_labels, moving, moving_labels = (sitk.ReadImage(str(p)) for p in paths)
    keep = np.array(sorted(DEEP_STRUCTURES))

    def deep(labels):
        array = sitk.GetArrayFromImage(labels)
        out = sitk.GetImageFromArray(np.where(np.isin(array, keep), array, 0).astype(np.int16))
        out.CopyInformation(labels)
        return out

    return sitk.Cast(fixed, sitk.sitkFloat32), deep(fixed_labels), sitk.Cast(moving, sitk.sitkFloat32), deep(moving_labels)


def _segmentation(scene, labels, name):
    import numpy as np
    import SimpleITK as sitk

    from VoxelMorphRegLib.mrml import segmentations, volumes

    array = sitk.GetArrayFromImage(labels)
    infos = []
    for value in sorted(int(v) for v in np.unique(array) if v != 0):
        label_name, rgb = {**DEEP_STRUCTURES, **CLINICAL_STRUCTURES}.get(value, (f"Label {value}", tuple(int(255 * c) for c in segmentations.default_color(value))))
        infos.append(segmentations.LabelInfo(value, label_name, tuple(c / 255.0 for c in rgb)))
    node = segmentations.new_segmentation_from_labels(array, volumes.ijk_to_ras_from_sitk(labels), infos, name=name)
    scene.AddNode(node)
    node.CreateDefaultDisplayNodes()
    return node


def _panel(pixels, name: str, bar: int, font):
    """One view's picture under a bar of its colour with its name, as Slicer's view controller shows it."""
    from PIL import Image, ImageDraw

    from slice_rendering import png_rows

    image = Image.fromarray(png_rows(pixels))
    panel = Image.new("RGB", (image.width, image.height + bar), VIEW_COLORS.get(name, (200, 200, 200)))
    panel.paste(image, (0, bar))
    ImageDraw.Draw(panel).text((4, 1), name[0], fill=(0, 0, 0), font=font)
    return panel


def _strip(panels, gap: int = 4, caption: str | None = None, font=None, caption_height: int = 0):
    from PIL import Image, ImageDraw

    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    height = max(p.height for p in panels) + caption_height
    strip = Image.new("RGB", (width, height), (255, 255, 255))
    x = 0
    for panel in panels:
        strip.paste(panel, (x, 0))
        x += panel.width + gap
    if caption:
        ImageDraw.Draw(strip).text((4, height - caption_height + 2), caption, fill=(0, 0, 0), font=font)
    return strip


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="folder with subjNN_norm.nii.gz and subjNN_seg.nii.gz (default: ../shared/data/aseg)")
    parser.add_argument("--pair", default="clinical", choices=("clinical", "aseg"),
                        help="clinical (default): two real whole-head T1 scans of the shared clinical folder with permissive licences (niivue_t1_head, BSD-2-Clause; "
                             "brainchop_t1 and its white matter, MIT), registered brain to brain; aseg: two of --data's subjects")
    parser.add_argument("--fixed", default="subj01")
    parser.add_argument("--moving", default="subj02")
    parser.add_argument("--synthetic", action="store_true", help="a small synthetic pair instead of the data (checks the script)")
    parser.add_argument("--model", default="bundled", help="bundled (default), none or a checkpoint file")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--brain-mask", default="auto", choices=("auto", "off"), help="the module's Brain mask check box: auto (on, the default) or off")
    parser.add_argument("--out-dir", default=str(DEFAULT_OUT), help="where the pictures go (default: Resources/Screenshots)")
    parser.add_argument("--size", type=int, default=360, help="pixels per view side in the PNG (default 360)")
    parser.add_argument("--fade-size", type=int, default=200, help="pixels per view side in the GIF (default 200)")
    parser.add_argument("--fade-steps", type=int, default=9, help="frames from fade 0 to fade 1 (default 9)")
    parser.add_argument("--sagittal-offset", type=float, default=-24.0,
                        help="mm added to the Yellow (sagittal) view's fitted offset, along R (default -24: through the left putamen and hippocampus)")
    args = parser.parse_args(argv)

    inputs = _inputs(args)
    if inputs is None:
        return 0
    import slice_rendering

    try:
        problem = slice_rendering.offscreen_problem()
    except RuntimeError as exc:
        problem = str(exc)
    if problem:
        _say(problem)
        return 1
    import numpy as np

    import slicer
    import slicer_app_fakes
    from VoxelMorphRegLib.errors import VoxelMorphRegError
    from VoxelMorphRegLib.mrml import views, volumes

    temporary = Path(tempfile.mkdtemp(prefix="render-slicer-views-"))
    try:
        module, slicer_module, _ = slicer_app_fakes.install(_Patch(), temporary)
        scene = slicer_module.mrmlScene
        slice_views = slice_rendering.SliceViews(scene, args.size, args.size, VIEWS)  # before the volumes (colour tables)
        slicer_module.app.layoutManager = lambda: slice_views  # the module fits the views through it

        fixed_image, fixed_labels, moving_image, moving_labels = inputs
        fixed_name, moving_name = ("fixed", "moving") if args.synthetic else (("niivue_t1_head", "brainchop_t1") if args.pair == "clinical" else (args.fixed, args.moving))
        fixed = volumes.sitk_to_volume(fixed_image, scene=scene, name=fixed_name)
        moving = volumes.sitk_to_volume(moving_image, scene=scene, name=moving_name)
        fixed_segmentation = None
        if fixed_labels is not None:
            fixed_segmentation = _segmentation(scene, fixed_labels, f"{fixed_name} deep structures")
            fixed_segmentation.GetDisplayNode().SetVisibility2D(False)  # for Dice only
        moving_segmentation = _segmentation(scene, moving_labels, f"{moving_name} {'white matter' if args.pair == 'clinical' and not args.synthetic else 'deep structures'}")

        logic = module.VoxelMorphRegLogic()
        started = time.perf_counter()
        try:
            result = logic.register(fixed, moving, movingSegmentation=moving_segmentation, fixedSegmentation=fixed_segmentation, model=args.model, device=args.device, brainMask=args.brain_mask == "auto")
        except VoxelMorphRegError as exc:
            _say(f"the registration failed: {exc}")
            return 1
        seconds = time.perf_counter() - started

        yellow = slice_views["Yellow"]
        if args.sagittal_offset:
            yellow.logic.SetSliceOffset(yellow.logic.GetSliceOffset() + args.sagittal_offset)
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        bar = max(14, args.size // 16)
        font = _font(bar - 3)
        views_png = out / "VoxelMorphReg_views.png"
        _strip([_panel(slice_views[name].render(), name, bar, font) for name in VIEWS]).save(views_png, optimize=True)

        # The fade: the same views, smaller, from the fixed volume (0) to the warped one (1).
        for view in slice_views:
            view.window.SetSize(args.fade_size, args.fade_size)
            view.logic.ResizeSliceNode(args.fade_size, args.fade_size)
        small_bar = max(12, args.fade_size // 16)
        small_font = _font(small_bar - 2)
        from PIL import Image

        frames = []
        steps = max(2, args.fade_steps)
        for fade in np.linspace(0.0, 1.0, steps):
            views.set_fade(scene, float(fade))
            frame = _strip([_panel(slice_views[name].render(), name, small_bar, small_font) for name in VIEWS],
                           caption=f"fixed / warped fade {fade:.2f}", font=small_font, caption_height=small_bar + 2)
            frames.append(frame.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE))
        durations = [1200] + [250] * (len(frames) - 2) + [1200]
        fade_gif = out / "VoxelMorphReg_fade.gif"
        frames[0].save(fade_gif, save_all=True, append_images=frames[1:], duration=durations, loop=0, optimize=True)
        views.set_fade(scene, 0.5)
        slice_views.close()

        dice = result.metrics.get("dice", {})
        summary = f"mean Dice of the {len(dice.get('labels', []))} deep structures {dice.get('mean_before', float('nan')):.3f} before, {dice.get('mean_after', float('nan')):.3f} after" if dice else "no Dice"
        _say(
            f"{moving_name} onto {fixed_name}, model {args.model}, {seconds:.1f} s through the module's logic; {summary}; "
            f"wrote {views_png} ({views_png.stat().st_size // 1024} KB) and {fade_gif} ({fade_gif.stat().st_size // 1024} KB, {len(frames)} frames)"
        )
        return 0
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
