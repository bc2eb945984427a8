"""VoxelMorphReg: learned deformable registration of 3D brain MRI.

Layers, in the one direction data flows:

* ``tensor``    -- pure PyTorch: network, integration, warping, losses, Jacobians.
* ``image``     -- SimpleITK geometry and file I/O; knows nothing of Slicer.
* ``pipelines`` -- register, train, evaluate, demo: use the two layers above.
* ``frontends`` -- command line and the MRML bridge: thin callers of the pipelines.

Nothing in this package imports Qt.
"""

__version__ = "0.1.0"
