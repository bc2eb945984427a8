"""The panel's widgets bound to the module's parameter node."""


def connectParametersToWidgets(parameterNode, ui):
    """Connect the widgets that name a parameter (``SlicerParameterName``) and return the tag that disconnects them.

    ``parameterNode.connectGui(ui)`` would do the same, but before Slicer 5.10 it returns None
    (Slicer issue 7547), so ``disconnectGui`` could never remove its connectors: they piled up at
    every ``enter()``, and each new combo-box connector reset its combo box. The mapping built here
    is the one ``connectGui`` builds; ``connectParametersToGui`` returns the tag in every version.
    """
    mapping = {}
    for widget in ui.__dict__.values():
        name = widget.property("SlicerParameterName") if hasattr(widget, "property") else None
        if name:
            mapping[str(name)] = widget
    return parameterNode.connectParametersToGui(mapping)
