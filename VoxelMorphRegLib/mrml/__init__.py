"""The MRML bridge: Slicer scene nodes <-> the files and images the engine reads and writes.

One concept per module:

* ``volumes``         -- volume node <-> SimpleITK image with exact geometry (IJKToRAS vs LPS).
* ``transforms``      -- displacement field (LPS vector image) <-> grid transform node (RAS,
                         TransformFromParent = fixed-to-moving resampling direction).
* ``segmentations``   -- segmentation / label map node <-> integer label map, names and
                         colours kept.
* ``tables``          -- metrics.json -> table node (Dice per segment, folding, runtime).
* ``outputs``         -- reading the engine's output folder and putting it into nodes at the end.
* ``engine_process``  -- an engine command in its own process group: output read line by line on a
                         thread, stop asked on its standard input, kill the whole tree, the engine (not
                         a launcher in front of it) waited for, no process left behind.
* ``engine_job``      -- what both runners keep: state, progress, log, the engine's events
                         (``VoxelMorphRegLib.contract``) and the callbacks told of them.
* ``runner``          -- the Qt-free registration runner: temp folder, engine process, progress,
                         cancel, import on success only.
* ``training_runner`` -- the Qt-free training runner: ``voxelmorphreg train`` in the background,
                         step progress from its events, stop (the engine saves ``last.pt``), the
                         checkpoint at the end.
* ``training_export`` -- scene volumes and segmentations -> the training files and CSVs the engine reads.
* ``training_log``    -- the engine's ``log.csv`` read row by row as it grows.
* ``training_plot``   -- the training curves: ``log.csv`` rows -> table nodes -> plot series -> a
                         plot chart.
* ``views``           -- slice view setup (fixed background, warped foreground, outlines).
* ``environment``     -- Python interpreter to run, dependency and device checks (no torch import).

These modules may import ``slicer``, ``vtk``, ``SimpleITK`` and ``numpy``; none imports Qt,
and none imports torch. Every function takes the scene or the nodes it works on, so the same
code runs inside Slicer and with the ``slicer-core`` wheel (MRML without the application).
"""
