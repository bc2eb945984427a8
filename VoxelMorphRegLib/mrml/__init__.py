"""The MRML bridge: Slicer scene nodes <-> the files and images the engine reads and writes.

One concept per module:

* ``volumes``       -- volume node <-> SimpleITK image with exact geometry (IJKToRAS vs LPS).
* ``transforms``    -- displacement field (LPS vector image) <-> grid transform node (RAS,
                       TransformFromParent = fixed-to-moving resampling direction).
* ``segmentations`` -- segmentation / label map node <-> integer label map, names and colours kept.
* ``tables``        -- metrics.json -> table node (Dice per segment, folding, runtime).
* ``outputs``       -- reading the engine's output folder and putting it into nodes at the end.
* ``runner``        -- the Qt-free registration runner: temp folder, engine process, progress,
                       cancel, import on success only.
* ``views``         -- slice view setup (fixed background, warped foreground, outlines).
* ``environment``   -- Python interpreter to run, dependency and device checks (no torch import).

These modules may import ``slicer``, ``vtk``, ``SimpleITK`` and ``numpy``; none imports Qt,
and none imports torch. Every function takes the scene or the nodes it works on, so the same
code runs inside Slicer and with the ``slicer-core`` wheel (MRML without the application).
"""
