"""Volume nodes <-> SimpleITK images, with the geometry carried exactly.

Slicer keeps a volume's geometry as the 4x4 IJKToRAS matrix; SimpleITK as origin, spacing and
a 3x3 direction matrix, all in LPS. With ``F = diag(-1, -1, 1)`` (RAS = F * LPS):

* ``IJKToRAS[:3, :3] = F @ direction_LPS @ diag(spacing)``
* ``IJKToRAS[:3, 3]  = F @ origin_LPS``

Both libraries index voxel arrays ``[k, j, i]``, so arrays pass unchanged.

A volume under a *linear* parent transform is exported with that transform included (the
geometry the user sees in the views: IJK to world); a non-linear parent transform is refused,
since the engine works on a regular grid.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import vtk

import slicer

from ..errors import VoxelMorphRegError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

# Label maps are written with the smallest of these that holds every value.
_INTEGER_TYPES = (np.uint8, np.int16, np.int32)


def _node_name(node) -> str:
    return node.GetName() if node is not None and node.GetName() else "volume"


def matrix_to_numpy(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    """A copy of the matrix as a 4x4 float64 array (``slicer.util.arrayFromVTKMatrix``)."""
    return np.asarray(slicer.util.arrayFromVTKMatrix(matrix), dtype=np.float64)


def numpy_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    """A new ``vtkMatrix4x4`` holding a 4x4 array (``slicer.util.vtkMatrixFromArray``)."""
    return slicer.util.vtkMatrixFromArray(np.asarray(array, dtype=np.float64))


def parent_to_world_matrix(node) -> np.ndarray:
    """4x4 matrix of the node's parent transforms (identity when there is none).

    Raises :class:`VoxelMorphRegError` when a parent transform is not linear.
    """
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise VoxelMorphRegError(
            f"{_node_name(node)}: is under a non-linear transform ({parent.GetName()}); harden the transform first "
            "(Data module: right-click the transform, 'Harden transform')"
        )
    matrix = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(matrix)
    return matrix_to_numpy(matrix)


def ijk_to_ras(node, world: bool = True) -> np.ndarray:
    """The node's IJKToRAS matrix (4x4), with linear parent transforms applied when ``world``."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    result = matrix_to_numpy(matrix)
    if world:
        result = parent_to_world_matrix(node) @ result
    return result


def lps_geometry(ijk_to_ras_matrix: np.ndarray, name: str = "volume", tolerance: float = 1e-4):
    """``(origin, spacing, direction)`` in LPS (direction row-major, 9 values) from an IJKToRAS matrix."""
    m = np.asarray(ijk_to_ras_matrix, dtype=np.float64)
    axes_lps = LPS_TO_RAS @ m[:3, :3]
    spacing = np.linalg.norm(axes_lps, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
        raise VoxelMorphRegError(f"{name}: invalid voxel spacing {tuple(spacing)}")
    direction = axes_lps / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=tolerance):
        raise VoxelMorphRegError(
            f"{name}: voxel axes are not orthogonal (sheared geometry, e.g. from a linear transform with shear); "
            "resample it on a regular grid first"
        )
    origin = LPS_TO_RAS @ m[:3, 3]
    return tuple(float(v) for v in origin), tuple(float(v) for v in spacing), tuple(float(v) for v in direction.flatten())


def ijk_to_ras_from_sitk(image: sitk.Image) -> np.ndarray:
    """IJKToRAS matrix (4x4) of a 3D SimpleITK image."""
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    result = np.eye(4)
    result[:3, :3] = LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    result[:3, 3] = LPS_TO_RAS @ np.array(image.GetOrigin(), dtype=np.float64)
    return result


def set_lps_geometry(image: sitk.Image, ijk_to_ras_matrix: np.ndarray, name: str = "volume") -> sitk.Image:
    origin, spacing, direction = lps_geometry(ijk_to_ras_matrix, name)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def voxel_array(node) -> np.ndarray:
    """A copy of the node's voxels as ``[k, j, i]`` (scalar volumes only)."""
    image_data = node.GetImageData() if node is not None else None
    if image_data is None or image_data.GetPointData() is None or image_data.GetPointData().GetScalars() is None:
        raise VoxelMorphRegError(f"{_node_name(node)}: has no voxels (empty volume)")
    if image_data.GetNumberOfScalarComponents() != 1:
        raise VoxelMorphRegError(f"{_node_name(node)}: has {image_data.GetNumberOfScalarComponents()} components per voxel; a scalar volume is needed")
    return np.array(slicer.util.arrayFromVolume(node), copy=True)


def volume_to_sitk(node, world: bool = True) -> sitk.Image:
    """A scalar (or label map) volume node as a SimpleITK image with the same voxels and geometry."""
    array = voxel_array(node)
    image = sitk.GetImageFromArray(array)
    return set_lps_geometry(image, ijk_to_ras(node, world), _node_name(node))


def smallest_integer_array(array: np.ndarray) -> np.ndarray:
    """``array`` (integral values) as the smallest of uint8/int16/int32 holding all its values."""
    array = np.asarray(array)
    if array.size == 0:
        return array.astype(np.uint8)
    low, high = int(array.min()), int(array.max())
    for dtype in _INTEGER_TYPES:
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return array.astype(dtype, copy=False)
    raise VoxelMorphRegError(f"label values {low}..{high} do not fit in 32 bits")


def new_volume_node(label: bool = False, name: str | None = None):
    """A volume node that is not in any scene yet."""
    node = slicer.vtkMRMLLabelMapVolumeNode() if label else slicer.vtkMRMLScalarVolumeNode()
    if name:
        node.SetName(name)
    return node


def update_volume_from_array(node, array: np.ndarray, ijk_to_ras_matrix: np.ndarray) -> None:
    """Replace the node's voxels and geometry (IJKToRAS) in one step."""
    with slicer.util.NodeModify(node):
        node.SetIJKToRASMatrix(numpy_to_matrix(ijk_to_ras_matrix))
        slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))


def sitk_to_volume(image: sitk.Image, node=None, scene=None, name: str | None = None, label: bool = False, ijk_to_ras_matrix: np.ndarray | None = None):
    """Put a SimpleITK image into ``node`` (or a new node, added to ``scene`` when given).

    ``ijk_to_ras_matrix`` overrides the image's own geometry, e.g. to give an engine output
    the fixed volume's exact geometry rather than what a NIfTI header rounded it to.
    """
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() != 3:
        raise VoxelMorphRegError(f"{name or 'image'}: a 3D scalar image is needed")
    array = sitk.GetArrayFromImage(image)
    if label:
        array = smallest_integer_array(array)
    matrix = ijk_to_ras_from_sitk(image) if ijk_to_ras_matrix is None else np.asarray(ijk_to_ras_matrix, dtype=np.float64)
    if node is None:
        node = new_volume_node(label, name)
    elif name:
        node.SetName(name)
    update_volume_from_array(node, array, matrix)
    if scene is not None and node.GetScene() is None:
        scene.AddNode(node)
        node.CreateDefaultDisplayNodes()
    return node


def same_geometry(image: sitk.Image, ijk_to_ras_matrix: np.ndarray, size, tolerance_mm: float = 1e-3) -> bool:
    """Whether ``image`` has ``size`` voxels and (to ``tolerance_mm`` at its corners) the given geometry."""
    if tuple(image.GetSize()) != tuple(int(v) for v in size):
        return False
    corners = np.array([[i, j, k, 1.0] for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)])
    a = corners @ ijk_to_ras_from_sitk(image).T
    b = corners @ np.asarray(ijk_to_ras_matrix, dtype=np.float64).T
    return bool(np.max(np.abs(a - b)) <= tolerance_mm * max(1.0, float(np.max(image.GetSpacing()))))


def volume_size(node) -> tuple[int, int, int]:
    """``(I, J, K)`` voxel counts of a volume node."""
    dims = node.GetImageData().GetDimensions()
    return int(dims[0]), int(dims[1]), int(dims[2])
