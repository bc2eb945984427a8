"""Which model a run uses: ``"bundled"``, ``"none"`` or a checkpoint path, decided here only.

Torch-free, so the Slicer module can list and resolve models before torch is installed. The
command line, evaluate, the benchmark and the Slicer module all call :func:`resolve_model_path`
(or :func:`bundled_model_path`); :func:`pipelines.loaded_model.load_model` loads what it names.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import VoxelMorphRegError

BUNDLED = "bundled"
NO_MODEL = "none"  # no network: per-pair optimisation from a zero velocity
# The bundled model files, preferred first: the newest one present is "the bundled model".
BUNDLED_MODEL_FILES = ("voxelmorphreg_v2.pt", "voxelmorphreg_v1.pt")
# The bundled brain extraction model (``--brain-mask auto``, ``voxelmorphreg brain-mask``).
BRAIN_MASK_MODEL_FILE = "voxelmorphreg_brainmask_v1.pt"
MODEL_DIR_VARIABLE = "VOXELMORPHREG_MODEL_DIR"


def model_search_path() -> list:
    """Where bundled models are looked for, in order: $VOXELMORPHREG_MODEL_DIR, the module's (or
    checkout's) Resources/Models, then the wheel's share/voxelmorphreg/models."""
    places = []
    if os.environ.get(MODEL_DIR_VARIABLE):
        places.append(Path(os.environ[MODEL_DIR_VARIABLE]))
    places.append(Path(__file__).resolve().parents[1] / "Resources" / "Models")
    places.append(Path(sys.prefix) / "share" / "voxelmorphreg" / "models")
    return places


def bundled_models() -> list:
    """Every bundled model file found, the preferred (the one "bundled" means) first."""
    found = []
    for name in BUNDLED_MODEL_FILES:
        for place in model_search_path():
            if (place / name).is_file():
                found.append(place / name)
                break
    return found


def bundled_model_path() -> Path:
    """The file ``--model bundled`` uses; a one-line error when there is none."""
    found = bundled_models()
    if found:
        return found[0]
    searched = ", ".join(str(p) for p in model_search_path())
    raise VoxelMorphRegError(f"bundled model {' or '.join(BUNDLED_MODEL_FILES)} not found (looked in {searched}); pass --model FILE or --model none")


def is_no_model(spec) -> bool:
    return spec == NO_MODEL


def resolve_model_path(spec) -> Path | None:
    """The checkpoint file of a model spec: ``None`` for "none"; the bundled file for "bundled"
    (or an empty/None spec); else the path itself, which must exist."""
    if is_no_model(spec):
        return None
    if spec is None or str(spec).strip() in ("", BUNDLED):
        return bundled_model_path()
    path = Path(spec).expanduser()
    if not path.is_file():
        raise VoxelMorphRegError(f"{path}: model file not found")
    return path


def bundled_brain_mask_model_path() -> Path:
    """The bundled brain extraction model file; a one-line error when there is none."""
    for place in model_search_path():
        if (place / BRAIN_MASK_MODEL_FILE).is_file():
            return place / BRAIN_MASK_MODEL_FILE
    searched = ", ".join(str(p) for p in model_search_path())
    raise VoxelMorphRegError(f"bundled brain mask model {BRAIN_MASK_MODEL_FILE} not found (looked in {searched}); pass --brain-mask-model FILE or --brain-mask off")
