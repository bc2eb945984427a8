"""Segmentation / label map nodes <-> label maps: names, colours and label values survive."""

import numpy as np
import vtk
import pytest
from conftest import require_slicer_core

sitk = pytest.importorskip("SimpleITK")
slicer = require_slicer_core()

from VoxelMorphRegLib.errors import VoxelMorphRegError  # noqa: E402
from VoxelMorphRegLib.mrml import segmentations as seg  # noqa: E402
from VoxelMorphRegLib.mrml import volumes  # noqa: E402

INFOS = [
    seg.LabelInfo(1, "Tumor", (1.0, 0.0, 0.0)),
    seg.LabelInfo(2, "Left ventricle", (0.0, 0.5, 1.0)),
    seg.LabelInfo(3, "Edema", (0.2, 0.9, 0.1)),
]


def oblique_reference(scene, name="reference"):
    image = sitk.Image(20, 18, 12, sitk.sitkFloat32)
    image.SetSpacing((1.5, 1.0, 2.5))
    image.SetOrigin((3.0, -4.0, 5.0))
    c, s = np.cos(0.4), np.sin(0.4)
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    return volumes.sitk_to_volume(image, scene=scene, name=name)


def blocks(shape=(12, 18, 20)):
    array = np.zeros(shape, np.uint8)
    array[2:6, 3:9, 4:10] = 1
    array[7:10, 10:15, 5:15] = 2
    array[1:3, 1:3, 15:19] = 3
    return array


@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()


def add_segmentation(scene, reference, array, infos, name="segmentation"):
    node = seg.new_segmentation_from_labels(array, volumes.ijk_to_ras(reference), infos, name=name)
    scene.AddNode(node)
    node.CreateDefaultDisplayNodes()
    return node


def test_segmentation_round_trip_keeps_names_colours_labels(scene):
    reference = oblique_reference(scene)
    array = blocks()
    node = add_segmentation(scene, reference, array, INFOS)
    segmentation = node.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(3)] == ["Tumor", "Left ventricle", "Edema"]
    np.testing.assert_allclose(segmentation.GetNthSegment(1).GetColor(), (0.0, 0.5, 1.0))

    exported, infos = seg.segmentation_to_label_array(node, reference)
    np.testing.assert_array_equal(exported, array)
    assert [(i.value, i.name) for i in infos] == [(1, "Tumor"), (2, "Left ventricle"), (3, "Edema")]
    np.testing.assert_allclose(infos[2].color, (0.2, 0.9, 0.1))

    rebuilt = add_segmentation(scene, reference, exported, infos, name="rebuilt")
    again, again_infos = seg.segmentation_to_label_array(rebuilt, reference)
    np.testing.assert_array_equal(again, array)
    assert [(i.name, i.color) for i in again_infos] == [(i.name, i.color) for i in infos]
    if infos[0].terminology:
        assert again_infos[0].terminology == infos[0].terminology


def test_export_uses_given_values_and_reference_grid(scene):
    reference = oblique_reference(scene)
    node = add_segmentation(scene, reference, blocks(), INFOS)
    infos = seg.segment_infos(node)
    exported, _ = seg.segmentation_to_label_array(node, reference, {infos[0].segment_id: 17})
    assert sorted(np.unique(exported)) == [0, 2, 3, 17]
    assert exported.shape == (12, 18, 20)


def test_export_onto_a_different_grid_resamples(scene):
    reference = oblique_reference(scene)
    node = add_segmentation(scene, reference, blocks(), INFOS)
    image = sitk.Image(10, 9, 6, sitk.sitkFloat32)  # same frame, half the resolution
    image.SetSpacing((3.0, 2.0, 5.0))
    image.SetOrigin((3.0, -4.0, 5.0))
    c, s = np.cos(0.4), np.sin(0.4)
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    coarse = volumes.sitk_to_volume(image, scene=scene, name="coarse")
    exported, _ = seg.segmentation_to_label_array(node, coarse)
    assert exported.shape == (6, 9, 10)
    assert set(np.unique(exported)) <= {0, 1, 2, 3} and (exported == 2).sum() > 0


def test_label_map_volume_names_from_colour_table(scene):
    reference = oblique_reference(scene)
    label_image = sitk.GetImageFromArray(blocks().astype(np.int16) * 2)
    label_image.CopyInformation(volumes.volume_to_sitk(reference))
    label_node = volumes.sitk_to_volume(label_image, scene=scene, label=True, name="aseg")
    colors = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "aseg colours")
    colors.SetTypeToUser()
    colors.SetNumberOfColors(7)
    colors.SetColor(2, "Thalamus", 0.0, 0.46, 0.05, 1.0)
    colors.SetColor(4, "Caudate", 0.48, 0.73, 0.86, 1.0)
    display = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeDisplayNode")
    display.SetAndObserveColorNodeID(colors.GetID())
    label_node.SetAndObserveDisplayNodeID(display.GetID())

    array, infos = seg.labels_to_array(label_node, reference)
    assert np.issubdtype(array.dtype, np.integer)
    np.testing.assert_array_equal(array, blocks() * 2)
    assert [(i.value, i.name) for i in infos] == [(2, "Thalamus"), (4, "Caudate"), (6, "Label 6")]
    np.testing.assert_allclose(infos[0].color, (0.0, 0.46, 0.05), atol=1.0 / 255)  # colour tables store 8 bits


def test_fixed_labels_matched_to_moving_by_name():
    moving = [seg.LabelInfo(1, "Tumor", (1, 0, 0)), seg.LabelInfo(2, "Edema", (0, 1, 0))]
    fixed = [seg.LabelInfo(1, "edema", (0, 0, 1)), seg.LabelInfo(2, "Necrosis", (1, 1, 0)), seg.LabelInfo(3, " TUMOR ", (1, 0, 1))]
    mapping = seg.match_fixed_labels(moving, fixed, keep_values=False)
    assert mapping == {1: 2, 2: 3, 3: 1}
    assert seg.match_fixed_labels(moving, fixed, keep_values=True) == {1: 1, 2: 2, 3: 3}
    array = np.array([[0, 1, 2, 3, 9]])
    np.testing.assert_array_equal(seg.remap(array, mapping), [[0, 2, 3, 1, 0]])


def test_warped_labels_become_segmentation_with_moving_legend(scene):
    """What the runner does with warped_labels.nii.gz: fixed grid, moving names/colours."""
    fixed = oblique_reference(scene, "fixed")
    warped = blocks()
    warped[0, 0, 0] = 5  # a value the legend does not know: kept, with a generic name
    node = seg.new_segmentation_from_labels(warped, volumes.ijk_to_ras(fixed), INFOS, name="warped")
    segmentation = node.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == ["Tumor", "Left ventricle", "Edema", "Label 5"]
    scene.AddNode(node)
    # Exporting numbers segments 1..N in order: "Label 5", the fourth segment, comes back as 4.
    exported, infos = seg.segmentation_to_label_array(node, fixed)
    expected = warped.copy()
    expected[0, 0, 0] = 4
    np.testing.assert_array_equal(exported, expected)
    assert [i.name for i in infos] == names


def test_empty_segmentation_is_refused(scene):
    reference = oblique_reference(scene)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    with pytest.raises(VoxelMorphRegError, match="no segments"):
        seg.segmentation_to_label_array(node, reference)


def test_closed_surface_segmentation_exported_without_changing_the_input(scene):
    """A segmentation whose source is a closed surface is converted on a copy."""
    import vtk

    reference = oblique_reference(scene)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "surface seg")
    sphere = vtk.vtkSphereSource()
    centre = volumes.ijk_to_ras(reference) @ np.array([10.0, 9.0, 6.0, 1.0])
    sphere.SetCenter(*centre[:3])
    sphere.SetRadius(6.0)
    sphere.SetPhiResolution(24)
    sphere.SetThetaResolution(24)
    sphere.Update()
    seg.ensure_segmentation_converters()
    node.GetSegmentation().SetSourceRepresentationName("Closed surface")
    node.AddSegmentFromClosedSurfaceRepresentation(sphere.GetOutput(), "Ball", [0.9, 0.1, 0.1])
    assert not node.GetSegmentation().ContainsRepresentation(seg.BINARY_LABELMAP)
    array, infos = seg.segmentation_to_label_array(node, reference)
    assert [i.name for i in infos] == ["Ball"]
    assert (array == 1).sum() > 50 and array[6, 9, 10] == 1
    assert not node.GetSegmentation().ContainsRepresentation(seg.BINARY_LABELMAP)


TERMINOLOGY = "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure~SCT^17137000^Brain~^^~Anatomic codes - DICOM master list~^^~^^"


def test_terminology_is_carried_with_the_api_of_slicer_5_6_and_5_8(scene, monkeypatch):
    """vtkSegment.Get/SetTerminology exist from Slicer 5.10 only; the terminology tag is there in every version."""

    class SegmentOf56(slicer.vtkSegment):
        def __getattribute__(self, name):
            if name in ("GetTerminology", "SetTerminology", "HasTerminology"):
                raise AttributeError(f"'vtkSegment' object has no attribute '{name}'")
            return super().__getattribute__(name)

    monkeypatch.setattr(slicer, "vtkSegment", SegmentOf56)
    reference = oblique_reference(scene)
    infos = [seg.LabelInfo(1, "Brain", (0.9, 0.8, 0.7), terminology=TERMINOLOGY), seg.LabelInfo(2, "Other", (0.1, 0.2, 0.3))]
    node = add_segmentation(scene, reference, blocks(), infos)
    assert isinstance(node.GetSegmentation().GetNthSegment(0), SegmentOf56)
    read = seg.segment_infos(node)
    assert (read[0].name, read[0].terminology) == ("Brain", TERMINOLOGY)
    assert read[1].terminology != TERMINOLOGY  # the others keep their own (Slicer's default)
    # What Slicer's own widgets read (the tag), in the segmentation built from the engine's labels.
    rebuilt = add_segmentation(scene, reference, blocks(), read, name="rebuilt")
    value = vtk.reference("")
    assert rebuilt.GetSegmentation().GetNthSegment(0).GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), value) and str(value) == TERMINOLOGY
