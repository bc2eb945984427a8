"""Slicer's own slice views, rendered offscreen on slicer-core: what a user would see, as pixels.

The pipeline is the application's (``qMRMLSliceWidget`` without Qt): per view a
``vtkMRMLSliceLogic`` (its layer logics reslice, window and blend the volumes exactly as in
Slicer), a renderer in an offscreen render window (VTK through EGL: no X server) and the
displayable managers that draw segmentations and transforms in slice views. Two things the
application does that slicer-core leaves to us:

* the slice image actor: in the application CTK's lightbox manager adds it to the renderer; here
  :class:`SliceViews` adds a ``vtkImageMapper`` actor fed by the slice logic's image itself;
* the logics registered with the application logic (Colors, Volumes): the application logic
  does not keep them alive, so :class:`SliceViews` holds a reference to each. The Colors logic
  must be registered before volumes are added to the scene: without it their display nodes get
  no colour table and the slices stay black.

Pixel arrays are ``[y, x, rgb]`` with ``y`` going up (row 0 at the bottom), i.e. indexed like
the slice node's XY coordinates: pixel ``(x, y)`` shows the point ``XYToRAS @ (x, y, 0, 1)``.
``png_rows`` flips them for writing a picture.

Used by ``test_rendered_views.py`` and ``bench/render_slicer_views.py``; :func:`outline_mask`
renders any segmentation node's outline the same way (a brain mask, say).
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import numpy as np
import SimpleITK as sitk

VIEW_ORIENTATIONS = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

_PROBE = textwrap.dedent(
    """
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(8, 8)
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(1.0, 0.0, 0.0)
    window.AddRenderer(renderer)
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.Update()
    pixels = vtk_to_numpy(grab.GetOutput().GetPointData().GetScalars())
    print("PIXEL", window.GetClassName(), *pixels[0][:3])
    """
)


def offscreen_problem(timeout_s: float = 60.0) -> str | None:
    """``None`` when VTK renders offscreen here, else why it cannot (no EGL, no OSMesa: nothing to render with).

    The probe renders a red 8x8 window in a child process: without EGL, VTK's fallback crashes
    the process that tries. A window that renders but reads back the wrong colour is not an
    absent renderer but a broken one: ``RuntimeError``.
    """
    env = _environment()
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return f"an offscreen VTK render did not finish in {timeout_s:.0f} s"
    line = next((l for l in done.stdout.splitlines() if l.startswith("PIXEL")), None)
    if done.returncode != 0 or line is None:
        tail = re.sub(r"\x1b\[[0-9;]*m", "", (done.stderr.strip().splitlines() or ["no output"])[-1]).strip()
        return f"VTK cannot render offscreen here (exit {done.returncode}: {tail}); on Debian: apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri"
    _, window, *rgb = line.split()
    if [int(v) for v in rgb] != [255, 0, 0]:
        raise RuntimeError(f"offscreen rendering through {window} is broken: a red window reads back {rgb}")
    return None


def _environment() -> dict:
    import os

    env = dict(os.environ)
    if not env.get("DISPLAY"):
        env.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # no X server: straight to EGL, without X's warning
    return env


def use_egl_without_display() -> None:
    """In this process: with no X display, make VTK open EGL windows directly (call before the first window)."""
    import os

    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


class SliceView:
    """One slice view: slice logic, renderer, offscreen window, displayable managers, slice image actor."""

    def __init__(self, views: "SliceViews", name: str, width: int, height: int):
        import slicer
        import vtk

        self.name = name
        self.window = vtk.vtkRenderWindow()
        self.window.SetOffScreenRendering(1)
        self.window.SetMultiSamples(0)
        self.window.SetSize(width, height)
        self.renderer = vtk.vtkRenderer()
        self.renderer.SetBackground(0.0, 0.0, 0.0)
        self.renderer.GetActiveCamera().ParallelProjectionOn()
        self.window.AddRenderer(self.renderer)
        # The displayable managers look for an interactor; a generic one needs no windowing system.
        self.interactor = vtk.vtkGenericRenderWindowInteractor()
        self.interactor.SetRenderWindow(self.window)
        self.interactor.Initialize()

        self.managers = slicer.vtkMRMLDisplayableManagerGroup()
        self.managers.SetRenderer(self.renderer)
        self.managers.Initialize(views.factory, self.renderer)

        self.logic = slicer.vtkMRMLSliceLogic()
        self.logic.SetMRMLApplicationLogic(views.application_logic)
        self.logic.SetMRMLScene(views.scene)
        views.application_logic.GetSliceLogics().AddItem(self.logic)
        self.node = self.logic.AddSliceNode(name)
        self.node.SetOrientation(VIEW_ORIENTATIONS.get(name, "Axial"))
        self.managers.SetMRMLDisplayableNode(self.node)
        self.composite = self.logic.GetSliceCompositeNode()

        # What CTK's lightbox manager does in the application: the slice logic's RGBA image as a 2D actor behind the rest.
        self.image_mapper = vtk.vtkImageMapper()
        self.image_mapper.SetColorWindow(255.0)
        self.image_mapper.SetColorLevel(127.5)
        self.image_actor = vtk.vtkActor2D()
        self.image_actor.SetMapper(self.image_mapper)
        self.image_actor.GetProperty().SetDisplayLocationToBackground()
        self.renderer.AddViewProp(self.image_actor)
        self.logic.ResizeSliceNode(width, height)

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.window.GetSize())

    def render(self) -> np.ndarray:
        """The view as ``[y, x, 3]`` uint8, row 0 at the bottom (the slice node's XY)."""
        import vtk
        from vtk.util.numpy_support import vtk_to_numpy

        self.image_mapper.SetInputConnection(self.logic.GetImageDataConnection())
        self.window.Render()
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(self.window)
        grab.SetInputBufferTypeToRGB()
        grab.ReadFrontBufferOff()
        grab.Update()
        image = grab.GetOutput()
        width, height, _ = image.GetDimensions()
        return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[..., :3].copy()

    def xy_to_ras(self) -> np.ndarray:
        """4x4 matrix from pixel coordinates ``(x, y, 0, 1)`` to RAS."""
        from VoxelMorphRegLib.mrml.volumes import matrix_to_numpy

        return matrix_to_numpy(self.node.GetXYToRAS())

    def pixel_grid(self) -> sitk.Image:
        """A one-slice SimpleITK image (LPS) whose voxel ``(x, y, 0)`` is this view's pixel ``(x, y)``."""
        width, height = self.size
        matrix = self.xy_to_ras()
        axes = LPS_TO_RAS @ matrix[:3, :3]
        spacing = np.linalg.norm(axes[:, :2], axis=0)
        direction = np.empty((3, 3))
        direction[:, :2] = axes[:, :2] / spacing
        normal = np.cross(direction[:, 0], direction[:, 1])
        direction[:, 2] = normal / np.linalg.norm(normal)
        grid = sitk.Image(int(width), int(height), 1, sitk.sitkUInt8)
        grid.SetOrigin(tuple(float(v) for v in LPS_TO_RAS @ matrix[:3, 3]))
        grid.SetSpacing((float(spacing[0]), float(spacing[1]), 1.0))
        grid.SetDirection(tuple(float(v) for v in direction.flatten()))
        return grid

    def sample(self, image: sitk.Image, interpolator=sitk.sitkLinear, default: float = 0.0) -> np.ndarray:
        """``image`` (LPS geometry) sampled at every pixel's point: ``[y, x]`` float64."""
        resampled = sitk.Resample(sitk.Cast(image, sitk.sitkFloat64), self.pixel_grid(), sitk.Transform(), interpolator, default, sitk.sitkFloat64)
        return sitk.GetArrayFromImage(resampled)[0]

    def sample_volume(self, volume_node, interpolator=sitk.sitkLinear) -> np.ndarray:
        from VoxelMorphRegLib.mrml.volumes import volume_to_sitk

        return self.sample(volume_to_sitk(volume_node), interpolator)

    def footprint(self, volume_node) -> np.ndarray:
        """``[y, x]`` bool: the pixels whose point lies in ``volume_node``'s voxels."""
        from VoxelMorphRegLib.mrml.volumes import volume_to_sitk

        image = volume_to_sitk(volume_node)
        ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
        ones.CopyInformation(image)
        return self.sample(ones, sitk.sitkNearestNeighbor) > 0

    def pixel_size_mm(self) -> float:
        return float(np.linalg.norm(self.xy_to_ras()[:3, 0]))

    def close(self) -> None:
        """Release the render window (its GL context)."""
        self.managers.SetMRMLDisplayableNode(None)
        self.image_mapper.SetInputConnection(None)
        self.window.Finalize()


class SliceViews:
    """The Red, Yellow and Green slice views of ``scene``, offscreen; create it before adding volumes.

    Also what ``slicer.app.layoutManager()`` gives the module: :meth:`mrmlSliceLogics`.
    """

    def __init__(self, scene, width: int = 160, height: int = 160, names=("Red", "Yellow", "Green")):
        import slicer
        import vtk

        use_egl_without_display()
        self.scene = scene
        self.application_logic = slicer.vtkSlicerApplicationLogic()
        self.application_logic.SetMRMLScene(scene)
        self.application_logic.SetSliceLogics(vtk.vtkCollection())
        self.application_logic.SetViewLogics(vtk.vtkCollection())
        # Registered logics are not kept alive by the application logic: these attributes do it.
        self.colors_logic = slicer.vtkMRMLColorLogic()
        self.colors_logic.SetMRMLApplicationLogic(self.application_logic)
        self.colors_logic.SetMRMLScene(scene)
        self.application_logic.SetModuleLogic("Colors", self.colors_logic)
        self.volumes_logic = slicer.vtkSlicerVolumesLogic()
        self.volumes_logic.SetMRMLApplicationLogic(self.application_logic)
        self.volumes_logic.SetMRMLScene(scene)
        self.application_logic.SetModuleLogic("Volumes", self.volumes_logic)
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)

        self.factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        self.factory.SetMRMLApplicationLogic(self.application_logic)
        for manager in ("vtkMRMLSegmentationsDisplayableManager2D", "vtkMRMLTransformsDisplayableManager2D"):
            if not self.factory.IsDisplayableManagerRegistered(manager):
                self.factory.RegisterDisplayableManager(manager)
        self.views = {name: SliceView(self, name, width, height) for name in names}

    def __getitem__(self, name) -> SliceView:
        return self.views[name]

    def __iter__(self):
        return iter(self.views.values())

    def mrmlSliceLogics(self):
        """A ``vtkCollection`` of the slice logics, as the application's layout manager returns it."""
        import vtk

        collection = vtk.vtkCollection()
        for view in self:
            collection.AddItem(view.logic)
        return collection

    def render_all(self) -> dict:
        return {name: view.render() for name, view in self.views.items()}

    def close(self) -> None:
        for view in self:
            view.close()


# -- what the pixels mean ----------------------------------------------------------------------------------


def window_level_grey(values: np.ndarray, window: float, level: float) -> np.ndarray:
    """The grey level (0-255) Slicer's grey colour table gives ``values`` at ``window``/``level``."""
    low = level - window / 2.0
    return np.clip((np.asarray(values, dtype=np.float64) - low) / window, 0.0, 1.0) * 255.0


def expected_grey(view: SliceView, volume_node) -> np.ndarray:
    """``[y, x]``: the grey level of ``volume_node`` at each pixel of ``view`` with its display node's window/level."""
    display = volume_node.GetDisplayNode()
    return window_level_grey(view.sample_volume(volume_node), display.GetWindow(), display.GetLevel())


def _segmentation_displays(scene):
    return [
        scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode").GetDisplayNode()
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"))
        if scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode").GetDisplayNode() is not None
    ]


def render_without_segmentations(view: SliceView) -> np.ndarray:
    """The view with every segmentation hidden in it (their settings restored afterwards)."""
    displays = _segmentation_displays(view.node.GetScene())
    saved = [d.GetVisibility2D() for d in displays]
    try:
        for display in displays:
            display.SetVisibility2D(False)
        return view.render()
    finally:
        for display, visible in zip(displays, saved):
            display.SetVisibility2D(visible)


def outline_mask(view: SliceView, segmentation_node, segment_ids=None) -> np.ndarray:
    """``[y, x]`` bool: the pixels ``segmentation_node`` changes in ``view`` as it is displayed, alone.

    The segmentation is drawn with its own display settings (outline, fill, thickness,
    opacity: whatever the module set) over the view's volume layers, every other segmentation
    hidden; ``segment_ids`` limits it to those segments. Returns the pixels that differ from the
    view without any segmentation: for an outline-only display, the outline.
    """
    display = segmentation_node.GetDisplayNode()
    if display is None:
        raise ValueError(f"{segmentation_node.GetName()} has no display node: nothing is drawn")
    bare = render_without_segmentations(view)
    others = [d for d in _segmentation_displays(view.node.GetScene()) if d is not display]
    saved_others = [d.GetVisibility2D() for d in others]
    segment_ids = list(segment_ids) if segment_ids is not None else None
    all_ids = [segmentation_node.GetSegmentation().GetNthSegmentID(i) for i in range(segmentation_node.GetSegmentation().GetNumberOfSegments())]
    saved_segments = {sid: display.GetSegmentVisibility(sid) for sid in all_ids}
    try:
        for other in others:
            other.SetVisibility2D(False)
        if segment_ids is not None:
            for sid in all_ids:
                display.SetSegmentVisibility(sid, sid in segment_ids)
        drawn = view.render()
    finally:
        for other, visible in zip(others, saved_others):
            other.SetVisibility2D(visible)
        for sid, visible in saved_segments.items():
            display.SetSegmentVisibility(sid, visible)
    return np.any(drawn != bare, axis=-1)


def label_boundary_distance(labels: sitk.Image) -> sitk.Image:
    """Distance in mm from each voxel centre to the nearest boundary between different labels (0 included)."""
    array = sitk.GetArrayFromImage(labels)
    distance = None
    for value in np.unique(array):
        region = sitk.GetImageFromArray((array == value).astype(np.uint8))
        region.CopyInformation(labels)
        d = sitk.Abs(sitk.SignedMaurerDistanceMap(region, insideIsPositive=False, squaredDistance=False, useImageSpacing=True))
        distance = d if distance is None else sitk.Minimum(distance, d)
    return distance


def png_rows(pixels: np.ndarray) -> np.ndarray:
    """A ``[y, x, ...]`` render with row 0 at the top, as picture files want it."""
    return np.ascontiguousarray(pixels[::-1])
