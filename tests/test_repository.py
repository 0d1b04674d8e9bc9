"""The repository stands on its own: no tracked file points outside it for its math or style.

    .venv/bin/python -m pytest tests/test_repository.py
"""
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OUTSIDE = "../" + "shared"  # built from parts, so this file does not match itself


def tracked_files():
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout ({exc}): nothing to list")
    return [ROOT / name for name in out.decode().split("\0") if name]


def test_no_tracked_file_refers_to_the_internal_design_folder():
    offenders = [str(path.relative_to(ROOT)) for path in tracked_files()
                 if path.is_file() and OUTSIDE.encode() in path.read_bytes()]
    assert not offenders, f"these tracked files refer to {OUTSIDE}, which users of psd do not have: {offenders}"


def test_docs_hold_the_math():
    for name in ("README.md", "loss.md", "fused_algorithm.md", "teachers.md", "distributed.md", "schedules.md"):
        assert (ROOT / "docs" / name).is_file(), f"docs/{name} is missing"
    assert "docs/" in (ROOT / "README.md").read_text()


MARKDOWN = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")),
            *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "results").glob("*/README.md"))]


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 350, f"README.md has {len(lines)} lines; guides belong in docs/"


@pytest.mark.parametrize("name", MARKDOWN)
def test_relative_links_resolve(name):
    """Every relative link of the README, the docs and the results pages names a file that exists."""
    page = ROOT / name
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+://|#|mailto:", target):
            continue
        assert (page.parent / target.split("#")[0]).exists(), f"{name}: link to {target} leads nowhere"
