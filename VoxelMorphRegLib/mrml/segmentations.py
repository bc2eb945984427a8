"""Segmentation and label map nodes <-> integer label maps, with segment names and colours kept.

The engine takes one integer label map per image, on that image's grid, and returns the moving
one resampled on the fixed grid (``warped_labels.nii.gz``). This module

* exports a segmentation node (or a label map volume node) as a label map on a reference
  volume's grid, remembering which value stands for which segment (:class:`LabelInfo`);
* gives the fixed segmentation the moving one's values for segments of the same name, so that
  the engine's Dice per label compares like with like;
* builds a segmentation node from a label map and that list (names, colours, terminology).

Segments that overlap are flattened: where two overlap, the later segment wins (as Slicer's
own export to a label map does).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

import slicer

from ..errors import VoxelMorphRegError
from .volumes import ijk_to_ras, lps_geometry, numpy_to_matrix, set_lps_geometry, smallest_integer_array, voxel_array, volume_size

BINARY_LABELMAP = "Binary labelmap"


@dataclass
class LabelInfo:
    """What one label value stands for."""

    value: int
    name: str
    color: tuple[float, float, float]
    segment_id: str = ""
    terminology: str = ""


def ensure_segmentation_converters() -> None:
    """Register the segmentation converter rules if nobody has (Slicer does at start-up; slicer-core does not)."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if factory.ConstructRepresentationObjectByRepresentation(BINARY_LABELMAP) is not None:
        return
    for rule in (
        slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule,
        slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule,
        slicer.vtkClosedSurfaceToFractionalLabelmapConversionRule,
        slicer.vtkFractionalLabelmapToClosedSurfaceConversionRule,
    ):
        factory.RegisterConverterRule(rule())


def default_color(value: int) -> tuple[float, float, float]:
    """A distinct, stable colour for a label value without a colour table."""
    hue = (value * 0.618033988749895) % 1.0
    return colorsys.hsv_to_rgb(hue, 0.65, 0.95)


def _normalised(name: str) -> str:
    return " ".join(name.lower().split())


def is_segmentation(node) -> bool:
    return node is not None and node.IsA("vtkMRMLSegmentationNode")


def is_label_map(node) -> bool:
    return node is not None and node.IsA("vtkMRMLLabelMapVolumeNode")


def segment_infos(segmentation_node) -> list[LabelInfo]:
    """One :class:`LabelInfo` per segment, in the segmentation's order, values 1..N."""
    segmentation = segmentation_node.GetSegmentation()
    infos = []
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segment_id)
        infos.append(LabelInfo(index + 1, segment.GetName() or segment_id, tuple(float(c) for c in segment.GetColor()), segment_id, segment_terminology(segment)))
    return infos


def segment_terminology(segment) -> str:
    """The segment's terminology entry (``""`` if none), read the way every supported Slicer has it.

    ``vtkSegment.GetTerminology()`` exists from Slicer 5.10 only; the tag it reads
    (``vtkSegment.GetTerminologyEntryTagName()``) is there in 5.6 and 5.8 too.
    """
    value = vtk.reference("")
    if segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), value):
        return str(value)
    return ""


def set_segment_terminology(segment, terminology: str) -> None:
    """Set the segment's terminology entry (the tag ``vtkSegment.SetTerminology`` sets from 5.10 on)."""
    if terminology:
        segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), str(terminology))


def _color_node_of(label_node):
    display = label_node.GetDisplayNode()
    return display.GetColorNode() if display is not None else None


def label_map_infos(label_node, values) -> list[LabelInfo]:
    """Names and colours of ``values`` from the label map's colour table (or generic ones)."""
    color_node = _color_node_of(label_node)
    infos = []
    for value in values:
        value = int(value)
        name, color = f"Label {value}", default_color(value)
        if color_node is not None and 0 <= value < color_node.GetNumberOfColors():
            table_name = color_node.GetColorName(value)
            if table_name and table_name != "(none)":
                name = table_name
            rgba = [0.0, 0.0, 0.0, 0.0]
            if color_node.GetColor(value, rgba):
                color = tuple(float(c) for c in rgba[:3])
        infos.append(LabelInfo(value, name, color))
    return infos


def _oriented_image_to_array(image) -> np.ndarray:
    dims = image.GetDimensions()
    scalars = image.GetPointData().GetScalars() if image.GetPointData() is not None else None
    if scalars is None or min(dims) <= 0:
        return np.zeros((0, 0, 0), dtype=np.uint8)
    return numpy_support.vtk_to_numpy(scalars).reshape(dims[2], dims[1], dims[0]).copy()


def segmentation_to_label_array(segmentation_node, reference_volume, values: dict[str, int] | None = None) -> tuple[np.ndarray, list[LabelInfo]]:
    """Label array ``[k, j, i]`` on the reference volume's grid and the value of each segment.

    ``values`` maps segment IDs to label values (default: 1..N in segment order). The parent
    transforms of the segmentation and of the reference volume are taken into account.
    """
    ensure_segmentation_converters()
    infos = segment_infos(segmentation_node)
    if not infos:
        raise VoxelMorphRegError(f"{segmentation_node.GetName()}: segmentation has no segments")
    if values:
        for info in infos:
            info.value = int(values.get(info.segment_id, info.value))
    source_node = segmentation_node
    if not segmentation_node.GetSegmentation().ContainsRepresentation(BINARY_LABELMAP):
        # Convert a copy, so the input segmentation (e.g. closed-surface source) is left as it is.
        # A copy outside the scene cannot keep a parent transform; then the input is converted.
        if segmentation_node.GetParentTransformNode() is None:
            source_node = slicer.vtkMRMLSegmentationNode()
            source_node.GetSegmentation().DeepCopy(segmentation_node.GetSegmentation())
        if not source_node.GetSegmentation().CreateRepresentation(BINARY_LABELMAP):
            raise VoxelMorphRegError(f"{segmentation_node.GetName()}: cannot be converted to a binary label map")
    segment_ids = vtk.vtkStringArray()
    label_values = vtk.vtkIntArray()
    for info in infos:
        segment_ids.InsertNextValue(info.segment_id)
        label_values.InsertNextValue(info.value)
    merged = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GenerateMergedLabelmapInReferenceGeometry(
        source_node, reference_volume, segment_ids, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, merged, label_values
    )
    size = volume_size(reference_volume)
    array = _oriented_image_to_array(merged)
    if array.shape != (size[2], size[1], size[0]):
        # Empty segmentations come back as an empty image; anything else is unexpected.
        if array.size and array.any():
            raise VoxelMorphRegError(f"{segmentation_node.GetName()}: exported label map has shape {array.shape}, expected {(size[2], size[1], size[0])}")
        array = np.zeros((size[2], size[1], size[0]), dtype=np.int32)
    return smallest_integer_array(array), infos


def _resample_labels_to(label_node, reference_volume) -> np.ndarray:
    """A label map volume's values on the reference volume's (world) grid, nearest neighbour."""
    source = sitk.GetImageFromArray(voxel_array(label_node))
    set_lps_geometry(source, ijk_to_ras(label_node), label_node.GetName() or "label map")
    size = volume_size(reference_volume)
    origin, spacing, direction = lps_geometry(ijk_to_ras(reference_volume), reference_volume.GetName() or "volume")
    resampled = sitk.Resample(source, size, sitk.Transform(), sitk.sitkNearestNeighbor, origin, spacing, direction, 0, source.GetPixelID())
    return sitk.GetArrayFromImage(resampled)


def label_map_to_label_array(label_node, reference_volume) -> tuple[np.ndarray, list[LabelInfo]]:
    """A label map volume node's values on the reference volume's grid, and what each value is."""
    array = voxel_array(label_node)
    if not np.issubdtype(array.dtype, np.integer) and not np.array_equal(array, np.round(array)):
        raise VoxelMorphRegError(f"{label_node.GetName()}: label values must be integers")
    same_grid = volume_size(label_node) == volume_size(reference_volume) and np.allclose(ijk_to_ras(label_node), ijk_to_ras(reference_volume), atol=1e-4)
    if not same_grid:
        array = _resample_labels_to(label_node, reference_volume)
    array = smallest_integer_array(np.round(array).astype(np.int64))
    values = [int(v) for v in np.unique(array) if v != 0]
    return array, label_map_infos(label_node, values)


def labels_to_array(node, reference_volume, values: dict[str, int] | None = None) -> tuple[np.ndarray, list[LabelInfo]]:
    """Segmentation or label map volume node -> label array on the reference grid and its legend."""
    if is_segmentation(node):
        return segmentation_to_label_array(node, reference_volume, values)
    if is_label_map(node) or (node is not None and node.IsA("vtkMRMLScalarVolumeNode")):
        return label_map_to_label_array(node, reference_volume)
    raise VoxelMorphRegError(f"{node.GetName() if node else 'None'}: not a segmentation or label map volume")


def match_fixed_labels(moving_infos: list[LabelInfo], fixed_infos: list[LabelInfo], keep_values: bool) -> dict[int, int]:
    """New value for each fixed label so that segments of the same name share the moving value.

    With ``keep_values`` (both inputs are label map volumes, e.g. two FreeSurfer asegs) the
    values already mean the same thing and are kept. Otherwise fixed labels are matched to moving
    ones by name (case and spacing ignored); unmatched ones get values no moving label uses.
    """
    if keep_values:
        return {info.value: info.value for info in fixed_infos}
    by_name = {_normalised(info.name): info.value for info in moving_infos}
    used = {info.value for info in moving_infos}
    next_value = max(used, default=0) + 1
    mapping = {}
    for info in fixed_infos:
        value = by_name.get(_normalised(info.name))
        if value is None:
            while next_value in used:
                next_value += 1
            value = next_value
            used.add(value)
        mapping[info.value] = value
    return mapping


def remap(array: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """Replace label values by ``mapping``; values it does not list become 0."""
    if not mapping:
        return np.zeros(array.shape, dtype=np.uint8)
    keys = np.array(sorted(mapping), dtype=np.int64)
    new_values = np.array([mapping[int(k)] for k in keys], dtype=np.int64)
    flat = np.asarray(array).astype(np.int64)
    index = np.clip(np.searchsorted(keys, flat), 0, len(keys) - 1)
    hit = keys[index] == flat
    return smallest_integer_array(np.where(hit, new_values[index], 0))


def labels_image(array: np.ndarray, ijk_to_ras_matrix: np.ndarray, name: str = "labels") -> sitk.Image:
    """Label array + IJKToRAS -> SimpleITK image (what the engine reads)."""
    return set_lps_geometry(sitk.GetImageFromArray(smallest_integer_array(array)), ijk_to_ras_matrix, name)


def oriented_image_from_array(array: np.ndarray, ijk_to_ras_matrix: np.ndarray):
    """``vtkOrientedImageData`` holding ``array`` ([k, j, i]) with the given IJKToRAS."""
    array = smallest_integer_array(array)
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    vtk_type = numpy_support.get_vtk_array_type(array.dtype)
    image.AllocateScalars(vtk_type, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = np.ascontiguousarray(array).ravel()
    image.SetGeometryFromImageToWorldMatrix(numpy_to_matrix(ijk_to_ras_matrix))
    return image


def fill_segmentation(segmentation_node, array: np.ndarray, ijk_to_ras_matrix: np.ndarray, infos: list[LabelInfo]) -> None:
    """Replace the segments of ``segmentation_node`` with one per label, sharing one label map layer.

    Every label in ``infos`` becomes a segment with that name, colour and terminology (even if it
    has no voxel left); values in ``array`` that ``infos`` does not name get generic segments.
    """
    ensure_segmentation_converters()
    present = {int(v) for v in np.unique(array) if v != 0}
    known = {info.value for info in infos}
    legend = list(infos) + [LabelInfo(v, f"Label {v}", default_color(v)) for v in sorted(present - known)]
    shared = oriented_image_from_array(array, ijk_to_ras_matrix)
    segmentation = segmentation_node.GetSegmentation()
    with slicer.util.NodeModify(segmentation_node):
        segmentation.RemoveAllSegments()
        segmentation.SetSourceRepresentationName(BINARY_LABELMAP)
        for info in legend:
            segment = slicer.vtkSegment()
            segment.SetName(info.name)
            segment.SetColor(*info.color)
            segment.SetLabelValue(int(info.value))
            set_segment_terminology(segment, info.terminology)
            segment.AddRepresentation(BINARY_LABELMAP, shared)
            segment_id = info.segment_id if info.segment_id and not segmentation.GetSegment(info.segment_id) else ""
            segmentation.AddSegment(segment, segment_id)


def new_segmentation_from_labels(array: np.ndarray, ijk_to_ras_matrix: np.ndarray, infos: list[LabelInfo], name: str | None = None, node=None):
    """A segmentation node (new, outside any scene, unless ``node`` is given) built from a label map."""
    if node is None:
        node = slicer.vtkMRMLSegmentationNode()
    if name:
        node.SetName(name)
    fill_segmentation(node, array, ijk_to_ras_matrix, infos)
    return node
