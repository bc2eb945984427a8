"""Slice view setup after a registration: fixed behind, warped in front, segments and the fixed brain mask as outlines.

Everything here acts on MRML nodes (slice composite nodes, display nodes), so it works the same
with or without the application; fitting the views needs slice logics, which the application
provides (``slicer.app.layoutManager().mrmlSliceLogics()``) and tests can make.
"""

from __future__ import annotations


def slice_composite_nodes(scene) -> list:
    return [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode") for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]


def set_fade(scene, opacity: float) -> None:
    """Foreground opacity of every slice view: 0 shows only the fixed volume, 1 only the warped one."""
    opacity = min(1.0, max(0.0, float(opacity)))
    for composite in slice_composite_nodes(scene):
        composite.SetForegroundOpacity(opacity)


def show_segmentation_outlines(segmentation_node, thickness: int = 2) -> None:
    """Show a segmentation in the slice views as outlines only (no fill)."""
    if segmentation_node is None:
        return
    if segmentation_node.GetDisplayNode() is None and segmentation_node.GetScene() is not None:
        segmentation_node.CreateDefaultDisplayNodes()
    display = segmentation_node.GetDisplayNode()
    if display is None:
        return
    display.SetVisibility(True)
    display.SetVisibility2DFill(False)
    display.SetVisibility2DOutline(True)
    display.SetSliceIntersectionThickness(int(thickness))


BRAIN_MASK_OUTLINE_THICKNESS = 1  # thinner than the segments' outlines: the mask frames the anatomy, the segments are the result


def show_brain_mask(mask_node) -> None:
    """Show a brain mask's segmentation in the slice views as a thin outline (no fill)."""
    if mask_node is None:
        return
    show_segmentation_outlines(mask_node, BRAIN_MASK_OUTLINE_THICKNESS)
    display = mask_node.GetDisplayNode()
    if display is not None:
        display.SetVisibility2D(True)


def fit_slice_views(slice_logics) -> int:
    """Fit each slice view to its volumes (the background, the fixed volume, first); returns how many views were fitted.

    ``slice_logics``: an iterable of ``vtkMRMLSliceLogic`` or a ``vtkCollection`` of them.
    ``FitSliceToAll()`` takes its size from the slice node in every supported Slicer version;
    ``FitSliceToBackground`` needs the view's width and height before Slicer 5.8.
    """
    if slice_logics is None:
        return 0
    if hasattr(slice_logics, "GetNumberOfItems"):
        slice_logics = [slice_logics.GetItemAsObject(i) for i in range(slice_logics.GetNumberOfItems())]
    fitted = 0
    for logic in slice_logics:
        if logic is not None:
            logic.FitSliceToAll()
            fitted += 1
    return fitted


def show_registration(scene, fixed_volume, warped_volume, segmentation_node=None, opacity: float = 0.5, slice_logics=None, hidden_segmentations=(), brain_mask=None) -> None:
    """Fixed volume as background, warped volume as foreground at ``opacity``, segmentation as outlines.

    ``hidden_segmentations``: segmentations to hide in the slice views (e.g. the moving one, which
    would otherwise be drawn in the moving image's place over the fixed one). ``brain_mask``: the
    fixed brain mask's segmentation node, shown as an outline (:func:`show_brain_mask`).
    """
    for composite in slice_composite_nodes(scene):
        composite.SetBackgroundVolumeID(fixed_volume.GetID() if fixed_volume is not None else None)
        composite.SetForegroundVolumeID(warped_volume.GetID() if warped_volume is not None else None)
        composite.SetForegroundOpacity(min(1.0, max(0.0, float(opacity))))
    for node in hidden_segmentations:
        if node is not None and node is not segmentation_node and node.GetDisplayNode() is not None:
            node.GetDisplayNode().SetVisibility2D(False)
    show_segmentation_outlines(segmentation_node)
    show_brain_mask(brain_mask)
    fit_slice_views(slice_logics)
