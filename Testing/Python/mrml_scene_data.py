"""Small volumes and segmentations in a scene, shared by the training export and training runner tests."""

import numpy as np
import pytest
import SimpleITK as sitk
import slicer

from VoxelMorphRegLib.mrml import segmentations, volumes


def rotation(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def make_volume(scene, name, size, spacing, origin, angle, seed):
    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray((rng.random(size[::-1]) * 100).astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(rotation(angle).flatten())
    return volumes.sitk_to_volume(image, scene=scene, name=name)


def make_segmentation(scene, volume, name, names):
    """Segments ``names`` (values 1..N in that order) as boxes on the volume's grid."""
    size = volumes.volume_size(volume)
    labels = np.zeros(size[::-1], np.uint8)
    for index in range(len(names)):
        labels[1 + 3 * index: 3 + 3 * index, 2:8, 2:9] = index + 1
    infos = [segmentations.LabelInfo(i + 1, n, (1.0, 0.0, 0.0)) for i, n in enumerate(names)]
    node = segmentations.new_segmentation_from_labels(labels, volumes.ijk_to_ras(volume), infos, name=name)
    scene.AddNode(node)
    return node


@pytest.fixture()
def scene_data():
    scene = slicer.vtkMRMLScene()
    v = [make_volume(scene, f"subj{i}", (12, 10, 8 + i), (1.0, 1.2, 2.0), (-10.0 + i, 5.0, 3.0), 0.2 * i, i) for i in range(4)]
    segs = [make_segmentation(scene, v[1], "subj1_seg", ["Hippocampus", "Amygdala"]),
            make_segmentation(scene, v[2], "subj2 segmentation", ["amygdala", "Thalamus", "hippocampus"]),
            make_segmentation(scene, v[3], "subj3-label", ["Hippocampus", "Thalamus"])]
    return {"scene": scene, "volumes": v, "segmentations": segs}


