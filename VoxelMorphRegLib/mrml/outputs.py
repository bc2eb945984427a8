"""The engine's output folder -> MRML nodes, all at once at the end of a successful run.

Two steps keep a failure from leaving half-made nodes behind:

1. :func:`stage_outputs` reads every file and builds every result as a node that is *not* in
   the scene. Any error here (missing file, wrong grid) leaves the scene untouched.
2. :func:`commit_outputs` then adds the new nodes to the scene, then copies the results into the
   existing nodes the user chose. If anything fails there, every node added since the commit
   began (the new outputs and the display nodes made for them) is removed again.

Outputs on the fixed grid get the fixed volume's exact IJKToRAS (after checking the file's
grid matches it to within 1e-3 voxel), not the rounded geometry a NIfTI header holds.

The brain masks (``--brain-mask auto`` on a whole head: ``brain_mask`` of the fixed scan, on its
grid; ``moving_brain_mask`` of the moving scan, on its own) become segmentation nodes with one
segment "Brain", shown as outlines only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..contract import BRAIN_MASK, DISPLACEMENT, INVERSE_DISPLACEMENT, JACOBIAN, METRICS, MOVING_BRAIN_MASK, WARPED, WARPED_LABELS, output_name  # the engine's output names
from ..errors import VoxelMorphRegError
from .segmentations import LabelInfo, new_segmentation_from_labels
from .tables import new_metrics_table, read_metrics
from .transforms import grid_transform_node_from_displacement, read_displacement
from .views import show_brain_mask
from .volumes import same_geometry, sitk_to_volume


# Output keys, in the order they are added to the scene.
OUTPUT_KEYS = ("warped_volume", "transform", "inverse_transform", "segmentation", "jacobian", "table", "brain_mask", "moving_brain_mask")
SEGMENTATION_KEYS = ("segmentation", "brain_mask", "moving_brain_mask")
BRAIN_SEGMENT_NAME = "Brain"  # the one segment of a brain mask node
BRAIN_SEGMENT_COLOR = (1.0, 0.8, 0.1)  # an outline that stands out on grey anatomy and on the warped segments


@dataclass
class _OutputNodes:
    """One node per output key (:data:`OUTPUT_KEYS`, in that order)."""

    warped_volume: object = None
    transform: object = None
    inverse_transform: object = None
    segmentation: object = None
    jacobian: object = None
    table: object = None
    brain_mask: object = None  # the fixed scan's brain mask (a segmentation node on the fixed grid)
    moving_brain_mask: object = None  # the moving scan's (on the moving grid)


@dataclass
class OutputTargets(_OutputNodes):
    """Existing nodes to put results into; ``None`` means "create a new node"."""


@dataclass
class ImportPlan:
    """What the runner knows about the inputs that the import needs."""

    fixed_node: object
    moving_node: object
    fixed_ijk_to_ras: np.ndarray
    fixed_size: tuple
    moving_ijk_to_ras: np.ndarray
    moving_size: tuple
    moving_segmentation_node: object = None
    label_infos: list = field(default_factory=list)  # LabelInfo of the moving labels
    label_names: dict = field(default_factory=dict)  # label value -> name, for the table
    inverse_transform: bool = False
    jacobian: bool = True
    table: bool = True
    brain_mask: bool = True  # import the fixed brain mask when the engine wrote one
    moving_brain_mask: bool = False  # and the moving one


@dataclass
class RegistrationResult(_OutputNodes):
    """The nodes a registration produced (or updated), and its metrics."""

    metrics: dict = field(default_factory=dict)
    log: list = field(default_factory=list)

    def nodes(self) -> dict:
        """The output nodes by key (only those produced)."""
        return {key: getattr(self, key) for key in OUTPUT_KEYS if getattr(self, key) is not None}

    def __getitem__(self, key):
        return getattr(self, key)


def _base_name(node, fallback: str) -> str:
    return (node.GetName() if node is not None and node.GetName() else "") or fallback


def default_names(plan: ImportPlan) -> dict:
    moving = _base_name(plan.moving_node, "moving")
    fixed = _base_name(plan.fixed_node, "fixed")
    segmentation = _base_name(plan.moving_segmentation_node, "segmentation")
    return {
        "warped_volume": f"{moving} warped",
        "transform": f"{moving} to {fixed} (VoxelMorph)",
        "inverse_transform": f"{fixed} to {moving} (VoxelMorph)",
        "segmentation": f"{segmentation} warped",
        "jacobian": f"{moving} to {fixed} Jacobian determinant",
        "table": f"{moving} to {fixed} registration metrics",
        "brain_mask": f"{fixed} brain mask",
        "moving_brain_mask": f"{moving} brain mask",
    }


def _output_path(folder: Path, file_name: str) -> Path:
    """The engine's file ``file_name`` in ``folder``: uncompressed (``.nii``, the runner's hand-off) or ``.nii.gz``."""
    plain = folder / output_name(file_name, compressed=False)
    return plain if plain.exists() else folder / file_name


def _read_on_grid(folder: Path, file_name: str, matrix: np.ndarray, size, what: str, pixel_type=None) -> sitk.Image:
    path = _output_path(folder, file_name)
    if not path.exists():
        raise VoxelMorphRegError(f"the engine did not write {file_name}")
    try:
        image = sitk.ReadImage(str(path), pixel_type) if pixel_type is not None else sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise VoxelMorphRegError(f"{file_name}: cannot be read ({str(exc).strip().splitlines()[-1]})") from None
    if not same_geometry(image, matrix, size):
        raise VoxelMorphRegError(
            f"{file_name}: grid (size {image.GetSize()}) is not the {what} volume's grid (size {tuple(size)}); engine and module disagree on geometry"
        )
    return image


def _read_transform_on_grid(folder: Path, file_name: str, matrix: np.ndarray, size, what: str, name: str):
    """The displacement file ``file_name`` (on the ``what`` volume's grid) as a new grid transform node."""
    path = _output_path(folder, file_name)
    field_image = read_displacement(path) if path.exists() else None
    if field_image is None:
        raise VoxelMorphRegError(f"the engine did not write {file_name}")
    if not same_geometry(field_image, matrix, size):
        raise VoxelMorphRegError(f"{file_name}: grid is not the {what} volume's grid")
    return grid_transform_node_from_displacement(field_image, name=name, ijk_to_ras_matrix=matrix)


def _read_brain_mask(folder: Path, file_name: str, matrix: np.ndarray, size, what: str, name: str):
    """The brain mask file ``file_name`` (on the ``what`` volume's grid) as a new segmentation node with one segment "Brain"."""
    mask = _read_on_grid(folder, file_name, matrix, size, what, sitk.sitkUInt8)
    array = (sitk.GetArrayFromImage(mask) > 0).astype(np.uint8)
    return new_segmentation_from_labels(array, matrix, [LabelInfo(1, BRAIN_SEGMENT_NAME, BRAIN_SEGMENT_COLOR)], name=name)


def brain_masks_written(folder, metrics: dict) -> dict:
    """``{"brain_mask": bool, "moving_brain_mask": bool}``: which masks the engine wrote into ``folder``.

    The engine writes both when the masks were used (metrics.json ``brain_mask.used``; a whole
    head with ``--brain-mask auto``), neither otherwise (two skull-stripped scans, ``off``)."""
    folder = Path(folder)
    used = bool((metrics.get("brain_mask") or {}).get("used"))
    return {key: used or _output_path(folder, file_name).exists() for key, file_name in (("brain_mask", BRAIN_MASK), ("moving_brain_mask", MOVING_BRAIN_MASK))}


def stage_outputs(folder, plan: ImportPlan) -> dict:
    """Read the engine's outputs into nodes outside the scene, keyed like :data:`OUTPUT_KEYS`, plus ``metrics``."""
    folder = Path(folder)
    names = default_names(plan)
    staged: dict = {}
    metrics = read_metrics(folder / METRICS) if (folder / METRICS).exists() else {}

    warped = _read_on_grid(folder, WARPED, plan.fixed_ijk_to_ras, plan.fixed_size, "fixed")
    staged["warped_volume"] = sitk_to_volume(warped, name=names["warped_volume"], ijk_to_ras_matrix=plan.fixed_ijk_to_ras)

    staged["transform"] = _read_transform_on_grid(folder, DISPLACEMENT, plan.fixed_ijk_to_ras, plan.fixed_size, "fixed", names["transform"])

    if plan.inverse_transform:
        staged["inverse_transform"] = _read_transform_on_grid(
            folder, INVERSE_DISPLACEMENT, plan.moving_ijk_to_ras, plan.moving_size, "moving", names["inverse_transform"]
        )

    if plan.moving_segmentation_node is not None:
        labels = _read_on_grid(folder, WARPED_LABELS, plan.fixed_ijk_to_ras, plan.fixed_size, "fixed")
        array = sitk.GetArrayFromImage(labels)
        infos = [LabelInfo(i.value, i.name, i.color, i.segment_id, i.terminology) for i in plan.label_infos]
        staged["segmentation"] = new_segmentation_from_labels(array, plan.fixed_ijk_to_ras, infos, name=names["segmentation"])

    if plan.jacobian:
        jacobian = _read_on_grid(folder, JACOBIAN, plan.fixed_ijk_to_ras, plan.fixed_size, "fixed")
        staged["jacobian"] = sitk_to_volume(jacobian, name=names["jacobian"], ijk_to_ras_matrix=plan.fixed_ijk_to_ras)

    if plan.table:
        staged["table"] = new_metrics_table(metrics, plan.label_names, name=names["table"])

    written = brain_masks_written(folder, metrics)  # a mask metrics.json promises but the folder lacks is an error
    if plan.brain_mask and written["brain_mask"]:
        staged["brain_mask"] = _read_brain_mask(folder, BRAIN_MASK, plan.fixed_ijk_to_ras, plan.fixed_size, "fixed", names["brain_mask"])
    if plan.moving_brain_mask and written["moving_brain_mask"]:
        staged["moving_brain_mask"] = _read_brain_mask(
            folder, MOVING_BRAIN_MASK, plan.moving_ijk_to_ras, plan.moving_size, "moving", names["moving_brain_mask"]
        )

    staged["metrics"] = metrics
    return staged


def _copy_into(target, source, key: str) -> None:
    """Put a staged result into an existing node the user chose."""
    import slicer

    with slicer.util.NodeModify(target):
        if key in ("warped_volume", "jacobian"):
            target.SetIJKToRASMatrix(_ijk_to_ras_vtk(source))
            target.SetAndObserveImageData(source.GetImageData())
        elif key in ("transform", "inverse_transform"):
            target.SetAndObserveTransformFromParent(source.GetTransformFromParent())
        elif key in SEGMENTATION_KEYS:
            target.GetSegmentation().DeepCopy(source.GetSegmentation())
        elif key == "table":
            target.SetAndObserveTable(source.GetTable())
            for attribute in ("VoxelMorphReg.Device", "VoxelMorphReg.Model"):
                target.SetAttribute(attribute, source.GetAttribute(attribute))
            for c in range(source.GetNumberOfColumns()):
                name = source.GetColumnName(c)
                target.SetColumnDescription(name, source.GetColumnDescription(name))


def _ijk_to_ras_vtk(node):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return matrix


def _style_new_node(key: str, node, plan: ImportPlan) -> None:
    """Display defaults for a node just added to the scene."""
    if key in ("warped_volume", "jacobian", "segmentation", "brain_mask", "moving_brain_mask"):
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode() if hasattr(node, "GetDisplayNode") else None
    if key == "warped_volume" and display is not None:
        source = plan.moving_node.GetDisplayNode() if plan.moving_node is not None else None
        if source is not None and source.IsA("vtkMRMLScalarVolumeDisplayNode") and not source.GetAutoWindowLevel():
            display.SetAutoWindowLevel(False)
            display.SetWindowLevel(source.GetWindow(), source.GetLevel())
    elif key == "jacobian" and display is not None:
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(0.0, 2.0)
    elif key == "segmentation" and plan.fixed_node is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(plan.fixed_node)
    elif key in ("brain_mask", "moving_brain_mask"):
        _style_brain_mask(key, node, plan)


def _style_brain_mask(key: str, node, plan: ImportPlan) -> None:
    """A brain mask node: the geometry of the volume it belongs to, drawn as an outline only (no fill)."""
    volume = plan.fixed_node if key == "brain_mask" else plan.moving_node
    if volume is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    show_brain_mask(node)


def _node_ids(scene) -> set:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def _remove_added(scene, before: set) -> None:
    """Remove every node that is in ``scene`` but was not in ``before`` (newest first): the outputs and their display nodes."""
    added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    for node in reversed([n for n in added if n is not None and n.GetID() not in before]):
        if node.GetScene() is scene:
            scene.RemoveNode(node)


def commit_outputs(scene, staged: dict, targets: OutputTargets | None, plan: ImportPlan, log=None) -> RegistrationResult:
    """Add the staged nodes to ``scene``, then copy the others into ``targets``; all or nothing for new nodes.

    New nodes go in first: if adding or styling one fails, no existing node has been touched yet.
    On any failure every node added since the commit began is removed, display nodes included."""
    targets = targets or OutputTargets()
    result = RegistrationResult(metrics=staged.get("metrics", {}), log=list(log or []))
    before = _node_ids(scene)
    keys = [key for key in OUTPUT_KEYS if staged.get(key) is not None]
    try:
        for key in [k for k in keys if getattr(targets, k) is None]:
            node = staged[key]
            node.SetName(scene.GenerateUniqueName(node.GetName()))
            scene.AddNode(node)
            _style_new_node(key, node, plan)
            setattr(result, key, node)
        for key in [k for k in keys if getattr(targets, k) is not None]:
            target = getattr(targets, key)
            _copy_into(target, staged[key], key)
            if key in ("warped_volume", "jacobian", *SEGMENTATION_KEYS) and target.GetDisplayNode() is None and target.GetScene() is not None:
                target.CreateDefaultDisplayNodes()
            if key in ("brain_mask", "moving_brain_mask") and target.GetScene() is not None:
                _style_brain_mask(key, target, plan)
            setattr(result, key, target)
    except Exception:
        _remove_added(scene, before)
        raise
    return result
