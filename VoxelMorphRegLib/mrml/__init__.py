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
                         thread, interrupt (SIGINT to the group), kill the whole tree, no process
                         left behind.
* ``runner``          -- the Qt-free registration runner: temp folder, engine process, progress,
                         cancel, import on success only; ``EngineJob``, the state, progress and log
                         both runners keep.
* ``training_runner`` -- the Qt-free training runner: training data from the scene or a folder,
                         ``voxelmorphreg train`` in the background, step progress, ``log.csv``
                         rows, stop (the engine saves ``last.pt``), the checkpoint at the end.
* ``training_plot``   -- the training curves: ``log.csv`` rows -> table nodes -> plot series -> a
                         plot chart.
* ``views``           -- slice view setup (fixed background, warped foreground, outlines).
* ``environment``     -- Python interpreter to run, dependency and device checks (no torch import).

These modules may import ``slicer``, ``vtk``, ``SimpleITK`` and ``numpy``; none imports Qt,
and none imports torch. Every function takes the scene or the nodes it works on, so the same
code runs inside Slicer and with the ``slicer-core`` wheel (MRML without the application).
"""
