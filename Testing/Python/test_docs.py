"""The documentation holds together: README.md and docs/*.md link to files and headings that exist.

The README is the newcomer's page (what it is, Slicer, the two commands, the tests); the reference
lives in docs/, one subject per page, each listed in the README.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "Resources" / "Models").glob("*.md"))]
# Pages announced in the README before they are written (another change brings them).
ANNOUNCED = {"docs/WHOLE_HEAD.md", "docs/SLICER_VIEWS.md"}
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(path: Path) -> set:
    """GitHub's heading anchors of a Markdown file: lower case, punctuation dropped, spaces as hyphens."""
    found, fenced = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_point_at_files_and_headings_that_exist(page):
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        relative = resolved.relative_to(ROOT).as_posix() if resolved.is_relative_to(ROOT) else str(resolved)
        if relative in ANNOUNCED and not resolved.exists():
            continue
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no such heading")
    assert not broken, broken


def test_the_readme_lists_every_page_of_docs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")} | ANNOUNCED
    assert not sorted(p for p in pages if f"]({p})" not in readme)


def test_the_readme_stays_a_first_page():
    """Slicer first, then the command line, then the tests; the test command is the one CI runs (.ci/run)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 300
    headings = [line for line in readme.splitlines() if line.startswith("## ")]
    assert headings[:3] == ["## Use it in 3D Slicer", "## Command line", "## Tests"], headings
    assert "Resources/Screenshots/VoxelMorphReg_views.png" in readme
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "pip install --quiet torch==2.13.0" in ci and "pip install --quiet -e \".[test]\"" in ci and "pytest -q" in ci and "Testing/Python" in ci
    assert "pip install torch==2.13.0\npip install -e \".[test]\" && python -m pytest -q Testing/Python\n" in readme
