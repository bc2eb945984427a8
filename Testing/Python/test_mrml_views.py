"""View setup after a registration, as far as MRML holds it: slice composite nodes, display nodes, fitting."""

import numpy as np
import pytest
from conftest import require_slicer_core

sitk = pytest.importorskip("SimpleITK")
slicer = require_slicer_core()

from VoxelMorphRegLib.mrml import segmentations, views, volumes  # noqa: E402

VIEWS = ("Red", "Yellow", "Green")


@pytest.fixture()
def layout():
    """A scene with three slice views (slice node + composite node + slice logic each), like the app's."""
    scene = slicer.vtkMRMLScene()
    logics = []
    for name in VIEWS:
        slice_node = slicer.vtkMRMLSliceNode()
        slice_node.SetName(name)
        slice_node.SetLayoutName(name)
        scene.AddNode(slice_node)
        composite = slicer.vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(name)
        scene.AddNode(composite)
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLScene(scene)
        logic.SetSliceNode(slice_node)
        logics.append(logic)
    image = sitk.Image(50, 60, 40, sitk.sitkFloat32)
    image.SetSpacing((2.0, 2.0, 3.0))
    image.SetOrigin((100.0, 200.0, 300.0))
    fixed = volumes.sitk_to_volume(image, scene=scene, name="fixed")
    warped = volumes.sitk_to_volume(image, scene=scene, name="warped")
    labels = np.zeros((40, 60, 50), np.uint8)
    labels[10:20, 10:30, 10:30] = 1
    segmentation = segmentations.new_segmentation_from_labels(labels, volumes.ijk_to_ras(fixed), [segmentations.LabelInfo(1, "Tumor", (1, 0, 0))], name="warped seg")
    scene.AddNode(segmentation)
    segmentation.CreateDefaultDisplayNodes()
    moving_segmentation = segmentations.new_segmentation_from_labels(labels, volumes.ijk_to_ras(fixed), [segmentations.LabelInfo(1, "Tumor", (1, 0, 0))], name="moving seg")
    scene.AddNode(moving_segmentation)
    moving_segmentation.CreateDefaultDisplayNodes()
    return scene, logics, fixed, warped, segmentation, moving_segmentation


def test_show_registration_sets_layers_outlines_and_fits(layout):
    scene, logics, fixed, warped, segmentation, moving_segmentation = layout
    views.show_registration(scene, fixed, warped, segmentation, opacity=0.5, slice_logics=logics, hidden_segmentations=[moving_segmentation])
    composites = views.slice_composite_nodes(scene)
    assert len(composites) == 3
    for composite in composites:
        assert composite.GetBackgroundVolumeID() == fixed.GetID()
        assert composite.GetForegroundVolumeID() == warped.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.5)
    display = segmentation.GetDisplayNode()
    assert display.GetVisibility() and display.GetVisibility2DOutline() and not display.GetVisibility2DFill()
    assert not moving_segmentation.GetDisplayNode().GetVisibility2D()
    # Fitted to the fixed volume: 50 x 2 mm by 60 x 2 mm in the axial view, centred on it.
    red = logics[0].GetSliceNode()
    assert max(red.GetFieldOfView()[:2]) == pytest.approx(120.0)
    centre = [red.GetSliceToRAS().GetElement(r, 3) for r in range(2)]
    np.testing.assert_allclose(centre, [-100.0 - 49.0, -200.0 - 59.0], atol=1e-6)


def test_fade_changes_foreground_opacity_everywhere(layout):
    scene, logics, fixed, warped, *_ = layout
    views.show_registration(scene, fixed, warped)
    views.set_fade(scene, 0.8)
    assert all(c.GetForegroundOpacity() == pytest.approx(0.8) for c in views.slice_composite_nodes(scene))
    views.set_fade(scene, 7.0)
    assert all(c.GetForegroundOpacity() == pytest.approx(1.0) for c in views.slice_composite_nodes(scene))


def test_fit_accepts_a_vtk_collection(layout):
    import vtk

    scene, logics, fixed, warped, *_ = layout
    views.show_registration(scene, fixed, warped)
    collection = vtk.vtkCollection()
    for logic in logics:
        collection.AddItem(logic)
    assert views.fit_slice_views(collection) == 3
    assert views.fit_slice_views(None) == 0


class _SliceLogicOf56:
    """A slice logic as Slicer 5.6 wraps it: FitSliceToBackground(int width, int height) has no defaults
    (they came in 5.8.0); FitSliceToAll(int width=-1, int height=-1) has them."""

    def __init__(self, logic):
        self._logic = logic

    def FitSliceToBackground(self, width, height):
        self._logic.FitSliceToBackground(width, height)

    def FitSliceToAll(self, width=-1, height=-1):
        self._logic.FitSliceToAll(width, height)

    def GetSliceNode(self):
        return self._logic.GetSliceNode()


def test_fit_works_with_the_slice_logic_of_slicer_5_6(layout):
    scene, logics, fixed, warped, segmentation, _ = layout
    views.show_registration(scene, fixed, warped, segmentation, slice_logics=[_SliceLogicOf56(logic) for logic in logics])
    assert max(logics[0].GetSliceNode().GetFieldOfView()[:2]) == pytest.approx(120.0)


def test_show_registration_outlines_the_fixed_brain_mask_and_hides_the_moving_one(layout):
    scene, logics, fixed, warped, segmentation, moving_segmentation = layout
    labels = np.zeros((40, 60, 50), np.uint8)
    labels[5:35, 10:50, 8:42] = 1
    masks = []
    for name in ("fixed brain mask", "moving brain mask"):
        mask = segmentations.new_segmentation_from_labels(labels, volumes.ijk_to_ras(fixed), [segmentations.LabelInfo(1, "Brain", (1, 0.8, 0.1))], name=name)
        scene.AddNode(mask)
        mask.CreateDefaultDisplayNodes()
        mask.GetDisplayNode().SetVisibility2D(False)  # hidden before: show_registration must show it
        masks.append(mask)
    views.show_registration(scene, fixed, warped, segmentation, 0.5, logics, [moving_segmentation, masks[1]], brain_mask=masks[0])
    display = masks[0].GetDisplayNode()
    assert display.GetVisibility() and display.GetVisibility2D() and display.GetVisibility2DOutline() and not display.GetVisibility2DFill()
    assert display.GetSliceIntersectionThickness() == views.BRAIN_MASK_OUTLINE_THICKNESS
    assert not masks[1].GetDisplayNode().GetVisibility2D()
    segments = segmentation.GetDisplayNode()
    assert segments.GetVisibility2DOutline() and not segments.GetVisibility2DFill()  # the warped segmentation as before
