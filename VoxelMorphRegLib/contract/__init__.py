"""What the engine and its front ends agree on, defined once: file names, events, options.

Torch-free and Qt-free: the Slicer module, the MRML bridge and the command line all import it.

How a front end uses it
-----------------------
1. Build the options and turn them into a command line::

       job = RegisterJob(fixed, moving, out, options=RegisterOptions(refine_iterations=50))
       argv = prefix + command_line(job, events="-")   # prefix: [python, "-m", "VoxelMorphRegLib.frontends.cli"]

   ``command_line`` is the only place that spells the engine's flags; the engine's own argparse
   parser is built from the same dataclass fields (:func:`add_arguments`) and read back with
   :func:`options_from_args`, so the two cannot drift apart. ``None`` always means "unset: the
   engine's (or the model's) default", and an unset option is left off the command line.
2. Read the engine's events: with ``--events -`` the engine writes one JSON object per line on
   stdout (human-readable ``[ NN%] stage`` lines stay on stderr for people); ``--events PATH``
   appends them to a file, ``--events fd:N`` writes them to an inherited file descriptor (POSIX).
   :func:`parse_event` turns a line into an event dataclass, or ``None`` for anything that is
   not an event (a human line, a library's warning), so reading a merged stdout+stderr stream
   works too: every event is written with one ``write`` of one line.
3. Find the outputs by their names (:data:`REGISTER_OUTPUTS`, :data:`LAST_CHECKPOINT`...).

The engine emits through an :class:`EventChannel` (:func:`open_event_channel`); pipelines take a
plain callable ``events(event)`` so that they do not care where the events go.

Where each part lives
---------------------
* :mod:`.file_names`: the names of the engine's output files (register, batch, train).
* :mod:`.events`: the ``--events`` JSON lines, :func:`parse_event` and the engine's :class:`EventChannel`.
* :mod:`.options`: the option dataclasses, the flags they define and :func:`command_line`.

Every name is importable from ``VoxelMorphRegLib.contract`` itself, as before the split.
"""

from .events import *  # noqa: F401,F403
from .file_names import *  # noqa: F401,F403
from .options import *  # noqa: F401,F403
