"""The module panel's Qt code, imported only inside Slicer (by ``VoxelMorphReg.py``).

* ``register_panel``: the Register panel (inputs, settings, outputs, Register/Cancel, fade).
* ``train_panel``: the Train panel (data, settings, Start/Stop, the live plot).
* ``engine_panel``: what both panels share.
* ``engine_setup``: installing PyTorch and MONAI on first use, and the device label.
* ``parameter_gui``: the widgets bound to the parameter node.
* ``translation``: ``_`` and ``translate`` (Slicer's, or the text itself before Slicer 5.4).

Everything that does not need Qt lives in ``VoxelMorphRegLib`` (the scene side in
``VoxelMorphRegLib.mrml``), which never imports Qt.
"""
