"""The one exception type that front ends turn into a one-line message and an exit code."""


class VoxelMorphRegError(Exception):
    """An expected fault (bad input, missing file, unavailable device...).

    The message is a single line that names the problem; front ends print it as
    ``voxelmorphreg: error: <message>`` and exit non-zero, without a traceback.
    """

    exit_code = 2


class CancelledError(VoxelMorphRegError):
    """The user cancelled a running job."""

    exit_code = 130
