"""The source stays readable: library files of one concept and a few hundred lines, and the bundled
model's file name spelled in one place only (model_resolution.BUNDLED_MODEL_FILES).

Static: the files are parsed, nothing is imported.
"""

import ast
from pathlib import Path

import pytest

from VoxelMorphRegLib.model_resolution import BUNDLED_MODEL_FILES

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = sorted((ROOT / "VoxelMorphRegLib").rglob("*.py"))
# Aim for about 450 lines per library file (docs/LAYOUT.md); past this a file holds more than one concept: split it.
LIBRARY_MAX_LINES = 500
# Code that runs (the engine, the Slicer module and its panels, the benchmarks, the in-Slicer check);
# the tests' own fixtures may spell file names.
CODE = sorted({*LIBRARY, ROOT / "VoxelMorphReg.py", *(ROOT / "VoxelMorphRegWidgets").glob("*.py"), *(ROOT / "bench").glob("*.py"), *(ROOT / "Testing" / "Slicer").glob("*.py")})


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_library_files_stay_short(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= LIBRARY_MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines: split it along a seam (one concept per file)"


def _strings_outside_docstrings(path):
    """Every string constant of ``path`` except the module's, classes' and functions' docstrings."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                docstrings.add(id(first.value))
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_the_bundled_model_files_are_named_in_model_resolution_only():
    """Everything else asks model_resolution ("bundled", bundled_model_path, BUNDLED_MODEL_FILES); docstrings may show a path."""
    owner = ROOT / "VoxelMorphRegLib" / "model_resolution.py"
    assert any(name in text for text in _strings_outside_docstrings(owner) for name in BUNDLED_MODEL_FILES)
    spelled = {}
    for path in CODE:
        if path == owner:
            continue
        for text in _strings_outside_docstrings(path):
            for name in BUNDLED_MODEL_FILES:
                if name in text:
                    spelled.setdefault(path.relative_to(ROOT).as_posix(), []).append(name)
    assert not spelled, f"use VoxelMorphRegLib.model_resolution instead of the file name: {spelled}"
