"""Displacement fields <-> grid transform nodes.

The engine writes ``displacement.nii.gz``: a 3-component vector image ``u`` on the fixed grid,
in mm and LPS, with ``T(p) = p + u(p)`` mapping a fixed point to the moving point (ITK's
resampling direction, what ``sitk.DisplacementFieldTransform`` holds).

In Slicer the same map is a transform node whose **TransformFromParent** is
``p_RAS -> p_RAS + u_RAS(p_RAS)`` with ``u_RAS = diag(-1, -1, 1) u_LPS`` sampled on the same
grid expressed in RAS. Put the moving volume under that node and it lands on the fixed one.
This mirrors what Slicer's transform storage node does when it reads a displacement field
(``vtkITKTransformConverter::SetVTKOrientedGridTransformFromITKImage``): origin and
direction flipped to RAS, vectors' x and y negated, cubic interpolation.

The field is read with SimpleITK in-process (the same library the engine used to write it),
so the LPS values come back exactly, whichever NIfTI intent code the file carries.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

import slicer

from ..errors import VoxelMorphRegError
from .volumes import LPS_TO_RAS, ijk_to_ras_from_sitk, matrix_to_numpy, numpy_to_matrix, set_lps_geometry

_FLIP = np.array([-1.0, -1.0, 1.0])


def read_displacement(path) -> sitk.Image:
    """Read a displacement field file as a float64 3-vector image (LPS mm)."""
    path = Path(path)
    try:
        image = sitk.ReadImage(str(path), sitk.sitkVectorFloat64)
    except RuntimeError as exc:
        raise VoxelMorphRegError(f"{path.name}: cannot be read as a displacement field ({str(exc).strip().splitlines()[-1]})") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 3:
        raise VoxelMorphRegError(f"{path.name}: a displacement field must be a 3D image with 3 components per voxel")
    return image


def grid_transform_from_displacement(field: sitk.Image, ijk_to_ras_matrix: np.ndarray | None = None) -> slicer.vtkOrientedGridTransform:
    """``vtkOrientedGridTransform`` (RAS) mapping ``p -> p + u(p)`` from an LPS displacement image.

    ``ijk_to_ras_matrix`` replaces the field's own geometry (e.g. the fixed volume's exact one).
    """
    if field.GetNumberOfComponentsPerPixel() != 3 or field.GetDimension() != 3:
        raise VoxelMorphRegError("a displacement field must be a 3D image with 3 components per voxel")
    matrix = ijk_to_ras_from_sitk(field) if ijk_to_ras_matrix is None else np.asarray(ijk_to_ras_matrix, dtype=np.float64)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    direction_ras = matrix[:3, :3] / spacing

    vectors_ras = np.asarray(sitk.GetArrayFromImage(field), dtype=np.float64)  # [K, J, I, 3], a copy (no second one when already float64)
    vectors_ras *= _FLIP  # LPS -> RAS, in place: the field is 160 MB at 1 mm
    size = field.GetSize()
    grid_image = vtk.vtkImageData()
    grid_image.SetDimensions(int(size[0]), int(size[1]), int(size[2]))
    grid_image.SetOrigin(*(float(v) for v in matrix[:3, 3]))
    grid_image.SetSpacing(*(float(v) for v in spacing))
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(vectors_ras.reshape(-1, 3)), deep=True, array_type=vtk.VTK_DOUBLE)
    scalars.SetNumberOfComponents(3)
    scalars.SetName("displacement")
    grid_image.GetPointData().SetScalars(scalars)

    direction = np.eye(4)
    direction[:3, :3] = direction_ras
    grid = slicer.vtkOrientedGridTransform()
    grid.SetGridDirectionMatrix(numpy_to_matrix(direction))
    grid.SetDisplacementGridData(grid_image)
    grid.SetInterpolationModeToCubic()
    return grid


def grid_transform_node_from_displacement(field: sitk.Image, node=None, name: str | None = None, ijk_to_ras_matrix: np.ndarray | None = None):
    """Set (or create, outside any scene) a transform node whose TransformFromParent is the field."""
    grid = grid_transform_from_displacement(field, ijk_to_ras_matrix)
    if node is None:
        node = slicer.vtkMRMLGridTransformNode()
    if name:
        node.SetName(name)
    node.SetAndObserveTransformFromParent(grid)
    return node


def load_displacement_as_transform_node(path, scene=None, name: str | None = None, ijk_to_ras_matrix: np.ndarray | None = None):
    """Read a displacement field file into a new grid transform node (added to ``scene`` if given)."""
    node = grid_transform_node_from_displacement(read_displacement(path), name=name or Path(path).name.split(".")[0], ijk_to_ras_matrix=ijk_to_ras_matrix)
    if scene is not None:
        scene.AddNode(node)
    return node


def _grid_geometry(grid: slicer.vtkOrientedGridTransform):
    image = grid.GetDisplacementGrid()
    direction = matrix_to_numpy(grid.GetGridDirectionMatrix())[:3, :3] if grid.GetGridDirectionMatrix() is not None else np.eye(3)
    matrix = np.eye(4)
    matrix[:3, :3] = direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return image, matrix


def _vector_image(vectors_lps: np.ndarray, ijk_to_ras_matrix: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(vectors_lps, dtype=np.float64), isVector=True)
    return set_lps_geometry(image, ijk_to_ras_matrix, "displacement field")


def _reference_points_ras(ijk_to_ras_matrix: np.ndarray, size, k: int) -> np.ndarray:
    """RAS positions ``[J*I, 3]`` of the voxels of slice ``k`` (i fastest)."""
    j, i = np.meshgrid(np.arange(size[1], dtype=np.float64), np.arange(size[0], dtype=np.float64), indexing="ij")
    ijk1 = np.stack([i.ravel(), j.ravel(), np.full(i.size, float(k)), np.ones(i.size)], axis=1)
    return (ijk1 @ np.asarray(ijk_to_ras_matrix).T)[:, :3]


def sample_transform(transform: vtk.vtkAbstractTransform, ijk_to_ras_matrix: np.ndarray, size) -> sitk.Image:
    """Displacement image (LPS) of any VTK transform (RAS -> RAS), sampled on a grid."""
    transform.Update()
    vectors = np.empty((size[2], size[1], size[0], 3), dtype=np.float64)
    for k in range(size[2]):
        points = _reference_points_ras(ijk_to_ras_matrix, size, k)
        source = vtk.vtkPoints()
        source.SetData(numpy_support.numpy_to_vtk(points, deep=True, array_type=vtk.VTK_DOUBLE))
        moved = vtk.vtkPoints()
        transform.TransformPoints(source, moved)
        displaced = numpy_support.vtk_to_numpy(moved.GetData()).reshape(-1, 3) - points
        vectors[k] = (displaced * _FLIP).reshape(size[1], size[0], 3)
    return _vector_image(vectors, ijk_to_ras_matrix)


def displacement_from_transform_node(node, reference_ijk_to_ras: np.ndarray | None = None, reference_size=None) -> sitk.Image:
    """The LPS displacement image (``sitk.DisplacementFieldTransform`` convention) of a node's FromParent.

    Without a reference grid the node must hold a grid transform as TransformFromParent (the
    grid's own geometry is used, values copied exactly). With a reference grid any transform is
    sampled there: ``u(p) = FromParent(p) - p``.
    """
    transform = node.GetTransformFromParent()
    if transform is None:
        raise VoxelMorphRegError(f"{node.GetName()}: holds no transform")
    if reference_ijk_to_ras is None:
        grid = transform if isinstance(transform, slicer.vtkOrientedGridTransform) else None
        if grid is None or grid.GetInverseFlag() or grid.GetDisplacementGrid() is None:
            raise VoxelMorphRegError(f"{node.GetName()}: is not a grid transform stored as TransformFromParent; give a reference grid to sample it on")
        grid.Update()
        image, matrix = _grid_geometry(grid)
        dims = image.GetDimensions()
        values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).astype(np.float64).reshape(dims[2], dims[1], dims[0], 3)
        values = values * grid.GetDisplacementScale() + grid.GetDisplacementShift()
        return _vector_image(values * _FLIP, matrix)
    if reference_size is None:
        raise VoxelMorphRegError("reference_size is needed with reference_ijk_to_ras")
    return sample_transform(transform, reference_ijk_to_ras, tuple(int(v) for v in reference_size))


__all__ = [
    "LPS_TO_RAS",
    "read_displacement",
    "grid_transform_from_displacement",
    "grid_transform_node_from_displacement",
    "load_displacement_as_transform_node",
    "displacement_from_transform_node",
    "sample_transform",
]
