"""The documentation site: it builds without warnings, and it documents every question."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = REPO_ROOT / "docs"

FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")

pytestmark = pytest.mark.xdist_group("docs")


def asked_questions() -> list[str]:
    """The questions of copier.yml: keys not starting with `_` whose `when` is not false."""
    config = yaml.safe_load((REPO_ROOT / "copier.yml").read_text(encoding="utf-8"))
    questions = []
    for name, spec in config.items():
        if name.startswith("_"):
            continue
        when = spec.get("when", True) if isinstance(spec, dict) else True
        if when is False or str(when).strip().lower() == "false":
            continue
        questions.append(name)
    return questions


def headings(markdown: str) -> list[str]:
    """The text of the ATX headings of a Markdown page, outside fenced code blocks."""
    found = []
    fence: str | None = None
    for line in markdown.splitlines():
        opening = FENCE.match(line)
        if fence is not None:
            if opening and opening.group(1)[0] == fence[0] and len(opening.group(1)) >= len(fence):
                fence = None
            continue
        if opening:
            fence = opening.group(1)
            continue
        match = HEADING.match(line)
        if match:
            found.append(match.group(1).replace("`", ""))
    return found


def documented_headings() -> dict[str, list[str]]:
    """Every heading of every docs page, by page."""
    return {
        str(page.relative_to(DOCS)): headings(page.read_text(encoding="utf-8"))
        for page in sorted(DOCS.rglob("*.md"))
    }


def test_the_site_builds_without_warnings(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=REPO_ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}{result.stderr}"
    assert (tmp_path / "index.html").is_file()


def test_copier_yml_has_questions() -> None:
    assert "db_mode" in asked_questions()
    assert "default_database_url" not in asked_questions()


@pytest.mark.parametrize("question", asked_questions())
def test_every_question_has_a_heading(question: str) -> None:
    word = re.compile(rf"(?<!\w){re.escape(question)}(?!\w)")
    pages = documented_headings()
    where = [page for page, texts in pages.items() if any(word.search(t) for t in texts)]
    assert where, f"no page under docs/ has a heading naming the question {question!r}"
