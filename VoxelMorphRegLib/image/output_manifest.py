"""The manifest of a run's output set: reading what its ``metrics.json`` lists.

The manifest names every file of its run with its size and SHA-256 (``files``) and the run's id
(``run_id``); :func:`check_manifest` says whether a folder holds exactly that set.
"""

from __future__ import annotations

import json
from pathlib import Path

from .io import file_sha256


def check_manifest(folder, manifest_name: str) -> list[str]:
    """What is wrong with the set in ``folder`` (empty: every file the manifest lists is there, with its size and SHA-256)."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / manifest_name).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"{manifest_name}: no readable manifest ({type(exc).__name__})"]
    problems = []
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != entry.get("bytes") or file_sha256(path) != entry.get("sha256"):
            problems.append(f"{name}: not the file its manifest names (size or checksum differs)")
    return problems


def manifest_files(path: Path) -> list[str]:
    try:
        files = json.loads(path.read_text()).get("files", {})
        return [name for name in files if isinstance(name, str) and not name.startswith(".") and "/" not in name and "\\" not in name]
    except (OSError, ValueError, AttributeError):
        return []


def manifest_run(path: Path):
    try:
        return json.loads(path.read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None

