"""The documentation site: it builds without warnings, and it documents every question."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.combinations import COMBINATIONS, combination_with, render

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


CODE_BLOCK = re.compile(r"^( *)```python\n(.*?)^\1```", re.DOTALL | re.MULTILINE)
# Every combination, and one with a fixed worker count, as the pages show them.
SHOWN = [c.data for c in COMBINATIONS] + [
    {**combination_with(database="postgresql", task_queue="celery").data, "workers": 4}
]


@pytest.fixture(scope="module")
def generated_lines(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every line (stripped) of every file of the projects the pages show."""
    lines: set[str] = set()
    for number, data in enumerate(SHOWN):
        project = render(tmp_path_factory.mktemp(f"shown-{number}") / "my-service", data)
        for path in project.rglob("*"):
            if path.is_file():
                lines.update(line.strip() for line in path.read_text().splitlines())
    return lines


@pytest.mark.parametrize(
    "page", [str(page.relative_to(DOCS)) for page in sorted(DOCS.rglob("*.md"))]
)
def test_python_shown_in_the_docs_is_the_generated_code(
    page: str, generated_lines: set[str]
) -> None:
    """Code blocks are excerpts: each of their lines is a line of a generated file."""
    markdown = (DOCS / page).read_text(encoding="utf-8")
    missing = []
    for block in CODE_BLOCK.finditer(markdown):
        first = markdown.count("\n", 0, block.start(2)) + 1
        for offset, line in enumerate(block.group(2).splitlines()):
            if line.strip() not in generated_lines | {"", "..."}:
                missing.append(f"{page}:{first + offset}: {line.strip()}")
    assert not missing, "not in any generated file:\n" + "\n".join(missing)
