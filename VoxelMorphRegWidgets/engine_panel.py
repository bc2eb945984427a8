"""What the Register and the Train panel share."""


class EnginePanel:
    """What both panels share: the module's parameter node and whether their engine runs."""

    @property
    def parameterNode(self):
        return self.widget._parameterNode

    @property
    def running(self) -> bool:
        return self.runner is not None and self.runner.running
