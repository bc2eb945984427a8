"""The fixed brain mask as the slice views show it, checked on rendered pixels.

A registration runs through the module's logic (``VoxelMorphRegLogic.register`` on slicer-core)
with the fake engine of test_mrml_runner playing a whole head (``FAKE_ENGINE_BRAIN=whole-head``:
the engine writes an ellipsoid ``brain_mask`` on the fixed grid), so the pixels test the module's
side alone: the mask node, its display and the views the logic set up. Slicer's own slice pipeline
then renders the Red, Yellow and Green views offscreen (``slice_rendering``, VTK through EGL).
The promise: the mask is drawn as an outline, on the mask's boundary, with nothing inside it.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import blob_volume, require_slicer_core, rotation

sitk = pytest.importorskip("SimpleITK")
slicer = require_slicer_core()

import slice_rendering  # noqa: E402
import slicer_app_fakes  # noqa: E402
from slice_rendering import SliceViews, label_boundary_distance, outline_mask, render_without_segmentations  # noqa: E402
from test_slicer_module_panel import _fake_engine  # noqa: E402

from VoxelMorphRegLib.mrml import volumes  # noqa: E402

VIEWS = ("Red", "Yellow", "Green")
SIZE = 128  # pixels per side: about 0.45 mm per pixel on the 57 mm fixed volume


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    problem = slice_rendering.offscreen_problem()
    if problem:
        pytest.skip(problem)
    tmp_path = tmp_path_factory.mktemp("brain")
    with pytest.MonkeyPatch.context() as patch:
        module, slicer_module, _ = slicer_app_fakes.install(patch, tmp_path)
        scene = slicer_module.mrmlScene
        slice_views = SliceViews(scene, SIZE, SIZE, VIEWS)  # before any volume: the Colors logic must be there first
        patch.setattr(slicer_module.app, "layoutManager", lambda: slice_views, raising=False)  # the module fits the views through it
        fixed_image = blob_volume(size=(40, 38, 34), spacing=(1.5, 1.4, 1.6), direction=rotation(0.15, -0.1, 0.2), origin=(20.0, -30.0, 10.0), seed=3)
        moving_image = blob_volume(size=(36, 40, 30), spacing=(1.6, 1.3, 1.7), direction=rotation(0.05, 0.1, -0.1), origin=(18.0, -28.0, 12.0), seed=4)
        fixed = volumes.sitk_to_volume(fixed_image, scene=scene, name="fixed")
        moving = volumes.sitk_to_volume(moving_image, scene=scene, name="moving")
        _fake_engine(patch, tmp_path)
        patch.setenv("FAKE_ENGINE_BRAIN", "whole-head")
        patch.setenv("FAKE_ENGINE_KEEP", str(tmp_path / "kept"))
        # The fake engine is no registration: the views are checked with the fixed volume alone behind the mask.
        result = module.VoxelMorphRegLogic().register(fixed, moving, movingBrainMask=True)
        mask_file = sitk.ReadImage(str(tmp_path / "kept" / "brain_mask.nii"))
        yield {
            "scene": scene, "views": slice_views, "result": result, "fixed": fixed, "mask_file": mask_file,
            "shown": slice_views.render_all(),  # the views exactly as the logic left them
            "boundary": label_boundary_distance(mask_file),
            "depth": sitk.SignedMaurerDistanceMap(mask_file, insideIsPositive=True, squaredDistance=False, useImageSpacing=True),
        }
        slice_views.close()


def test_the_brain_mask_outline_lies_on_the_mask_boundary(run):
    """The fixed mask's outline, and nothing else of it, is drawn: on its boundary, not inside (no fill), not elsewhere."""
    mask = run["result"].brain_mask
    eroded = sitk.BinaryErode(run["mask_file"], [3, 3, 3])  # a mask 3 voxels smaller: what a wrong outline would follow
    for view in run["views"]:
        assert view.composite.GetBackgroundVolumeID() == run["fixed"].GetID(), view.name
        outline = outline_mask(view, mask)
        # As the logic left the views: the fixed mask's outline is exactly what segmentations add (the moving mask, in
        # moving space, is hidden there).
        drawn = np.any(run["shown"][view.name] != render_without_segmentations(view), axis=-1)
        assert outline.sum() > 200, view.name
        assert (drawn != outline).mean() < 0.002, view.name
        distances = view.sample(run["boundary"], sitk.sitkLinear, 1e9)[outline]
        # Voxels 1.4-1.6 mm, pixels about 0.45 mm: 90 % of the outline within 1 mm of the boundary, all within 2.5 mm.
        assert np.percentile(distances, 90) < 1.0 and distances.max() < 2.5, (view.name, np.percentile(distances, 90), distances.max())
        # No fill: the pixels well inside the mask (more than 3 mm from its edge) are left as the volume shows them.
        inside = view.sample(run["depth"], sitk.sitkLinear, -1e9) > 3.0
        assert inside.sum() > 1000 and not outline[inside].any(), view.name
        # The test can fail: the same pixels measured against the smaller mask's boundary are millimetres off.
        wrong = view.sample(label_boundary_distance(eroded), sitk.sitkLinear, 1e9)[outline]
        assert np.percentile(wrong, 90) > 2.5, (view.name, np.percentile(wrong, 90))


def test_the_moving_brain_mask_is_styled_but_hidden_over_the_fixed_volume(run):
    """The moving mask (movingBrainMask=True) is outline-only too, but hidden in views that show the fixed volume:
    shown, it would draw its outline where the moving scan's brain was, not on the fixed anatomy."""
    moving_mask = run["result"].moving_brain_mask
    display = moving_mask.GetDisplayNode()
    assert not display.GetVisibility2D() and display.GetVisibility2DOutline() and not display.GetVisibility2DFill()
    for view in run["views"]:
        try:
            display.SetVisibility2D(True)
            moving_outline = outline_mask(view, moving_mask)
        finally:
            display.SetVisibility2D(False)
        fixed_outline = outline_mask(view, run["result"].brain_mask)
        assert moving_outline.sum() > 200 and (moving_outline != fixed_outline).sum() > 100, view.name
