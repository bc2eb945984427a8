"""``_`` and ``translate`` for the module's texts: Slicer's own (5.4 and later), else the text itself.

``_`` is ``slicer.i18n.tr`` itself, not a wrapper: it takes its translation context from the file
that calls it (``slicer.i18n.getContext``), e.g. ``VoxelMorphReg`` for the module script and
``VoxelMorphRegWidgets.register_panel`` for the Register panel.
"""

try:
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # Slicer < 5.4

    def _(text):
        return text

    def translate(context, text):
        return text


__all__ = ["_", "translate"]
