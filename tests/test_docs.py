"""The documentation site: it builds without warnings, and it documents every question."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.combinations import COMBINATIONS, combination_with, render

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
SHOWN = [(c.id, c.data) for c in COMBINATIONS] + [
    (
        f"{combination_with(database='postgresql', task_queue='celery').id}, workers=4",
        {**combination_with(database="postgresql", task_queue="celery").data, "workers": 4},
    )
]
# A line `...` in an excerpt stands for lines left out between two runs of the same file.
ELISION = "..."


@dataclass(frozen=True)
class Lines:
    """Lines as excerpts and files are compared: without trailing whitespace, each run of blank
    lines as one, with the line number (in the page or the file) of each."""

    numbers: tuple[int, ...]
    text: tuple[str, ...]

    @classmethod
    def of(cls, lines: list[str], first: int = 1) -> Lines:
        numbers: list[int] = []
        text: list[str] = []
        for number, line in enumerate(lines, start=first):
            line = line.rstrip()
            if line or (text and text[-1]):
                numbers.append(number)
                text.append(line)
        while text and not text[-1]:
            numbers.pop()
            text.pop()
        return cls(tuple(numbers), tuple(text))


@dataclass
class Source:
    """A generated file's text, in the first of the shown projects that has it."""

    name: str
    lines: Lines = field(repr=False)
    # Where each stripped line occurs, for finding where a run of an excerpt may start.
    where: dict[str, list[int]] = field(repr=False)

    @classmethod
    def of(cls, name: str, text: str) -> Source:
        lines = Lines.of(text.splitlines())
        where: dict[str, list[int]] = {}
        for at, line in enumerate(lines.text):
            where.setdefault(line.strip(), []).append(at)
        return cls(name, lines, where)


def runs_of(block: str, first: int) -> list[Lines]:
    """An excerpt's runs of lines between `...` lines, each dedented on its own."""
    runs = []
    start = 0
    lines = block.splitlines()
    cuts = [n for n, line in enumerate(lines) if line.strip() == ELISION]
    for end in [*cuts, len(lines)]:
        part = textwrap.dedent("\n".join(lines[start:end])).splitlines()
        run = Lines.of(part, first + start)
        if run.text:
            runs.append(run)
        start = end + 1
    return runs


def matches_at(run: Lines, source: Source, at: int) -> bool:
    """Whether the run is the source's lines from `at` on, each indented by the same margin."""
    if at + len(run.text) > len(source.lines.text):
        return False
    margin: str | None = None
    for shown, generated in zip(run.text, source.lines.text[at:], strict=False):
        if not shown or not generated:
            if shown != generated:
                return False
            continue
        if not generated.endswith(shown):
            return False
        extra = generated[: len(generated) - len(shown)]
        if extra.strip() or margin not in (None, extra):
            return False
        margin = extra
    return True


def is_excerpt_of(runs: list[Lines], source: Source) -> bool:
    """Whether each run is contiguous lines of the source, each run after the one before.

    Each run takes its earliest place after the one before: a later place would only leave
    less room for the runs after it."""
    after = 0
    for run in runs:
        places = source.where.get(run.text[0].strip(), [])
        at = next((n for n in places if n >= after and matches_at(run, source, n)), None)
        if at is None:
            return False
        after = at + len(run.text)
    return True


def closest(runs: list[Lines], sources: list[Source]) -> str:
    """The longest stretch of the excerpt (compared line by stripped line) found in one generated
    file, and where the excerpt leaves that file."""
    best: tuple[int, int, int, int, Source] | None = None  # length, run, in run, in file, file
    for r, run in enumerate(runs):
        shown = [line.strip() for line in run.text]
        for i, line in enumerate(shown):
            if not line:
                continue
            for source in sources:
                for j in source.where.get(line, []):
                    generated = source.lines.text
                    length = 0
                    while (
                        i + length < len(shown)
                        and j + length < len(generated)
                        and shown[i + length] == generated[j + length].strip()
                    ):
                        length += 1
                    if best is None or length > best[0]:
                        best = (length, r, i, j, source)
    if best is None:
        return "no line of it is in any generated file"
    length, r, i, j, source = best
    run = runs[r]
    generated = source.lines
    said = (
        f"closest: {source.name}, whose lines {generated.numbers[j]}-"
        f"{generated.numbers[j + length - 1]} are the page's lines {run.numbers[i]}-"
        f"{run.numbers[i + length - 1]}"
    )
    if i + length < len(run.text):
        there = (
            f"its line {generated.numbers[j + length]}: {generated.text[j + length].strip()!r}"
            if j + length < len(generated.text)
            else "its end"
        )
        return f"{said}; the page's line {run.numbers[i + length]} " + (
            f"{run.text[i + length].strip()!r} is not the file's next line ({there})"
        )
    if i > 0:
        there = (
            f"its line {generated.numbers[j - 1]}: {generated.text[j - 1].strip()!r}"
            if j > 0
            else "its start"
        )
        return f"{said}; the page's line {run.numbers[i - 1]} " + (
            f"{run.text[i - 1].strip()!r} is not the file's line before ({there})"
        )
    return f"{said}; the excerpt's runs are out of order there, or indented differently"


@dataclass(frozen=True)
class Shown:
    """A project the pages show: its answers, and the text of each of its files by path."""

    name: str
    answers: dict[str, Any]
    files: dict[str, str] = field(repr=False)


# The answers a combination leaves at their defaults, for comparing two projects' answers.
ANSWER_DEFAULTS = {"celery_broker": "redis", "workers": 0}


@pytest.fixture(scope="session")
def shown_projects(tmp_path_factory: pytest.TempPathFactory) -> list[Shown]:
    """Every project the pages show, rendered once per process: the worker that runs the docs
    tests may run other tests between them, which would end a fixture of the module's."""
    projects = []
    for number, (name, data) in enumerate(SHOWN):
        project = render(tmp_path_factory.mktemp(f"shown-{number}") / "my-service", data)
        files = {}
        for path in sorted(project.rglob("*")):
            relative = path.relative_to(project)
            if path.is_file() and ".git" not in relative.parts:
                with contextlib.suppress(UnicodeDecodeError):
                    files[relative.as_posix()] = path.read_text(encoding="utf-8")
        projects.append(Shown(name, {**ANSWER_DEFAULTS, **data}, files))
    return projects


@pytest.fixture(scope="session")
def generated_sources(shown_projects: list[Shown]) -> list[Source]:
    """Every file of the projects the pages show, each distinct text once."""
    sources: dict[str, Source] = {}
    for project in shown_projects:
        for path, text in project.files.items():
            sources.setdefault(text, Source.of(f"{path} ({project.name})", text))
    return list(sources.values())


@pytest.mark.parametrize(
    "page", [str(page.relative_to(DOCS)) for page in sorted(DOCS.rglob("*.md"))]
)
def test_python_shown_in_the_docs_is_the_generated_code(
    page: str, generated_sources: list[Source]
) -> None:
    """Python blocks are excerpts: contiguous lines of one generated file, in its order. A line
    `...` leaves out lines between two runs, each of them contiguous in that same file."""
    markdown = (DOCS / page).read_text(encoding="utf-8")
    wrong = []
    for block in CODE_BLOCK.finditer(markdown):
        first = markdown.count("\n", 0, block.start(2)) + 1
        runs = runs_of(block.group(2), first)
        if runs and not any(is_excerpt_of(runs, source) for source in generated_sources):
            wrong.append(f"{page}:{first}: {closest(runs, generated_sources)}")
    if wrong:
        pytest.fail("excerpts that are not a generated file's lines:\n" + "\n".join(wrong), False)


def excerpt(*lines: str) -> list[Lines]:
    return runs_of("\n".join(lines), 1)


SOURCE = Source.of("example.py", "def f() -> int:\n    a = 1\n    b = 2\n\n\n    return a + b\n")


@pytest.mark.parametrize(
    ("lines", "matches"),
    [
        (["def f() -> int:", "    a = 1", "    b = 2"], True),
        (["a = 1", "b = 2", "", "return a + b"], True),  # dedented; blank lines as one
        (["def f() -> int:", "    ...", "    return a + b"], True),
        (["def f() -> int:", "    b = 2"], False),  # a line left out
        (["b = 2", "a = 1"], False),  # reordered
        (["return a + b", "...", "a = 1"], False),  # runs out of order
        (["a = 1", "    b = 2"], False),  # indented otherwise
    ],
)
def test_an_excerpt_is_contiguous_lines_of_one_file(lines: list[str], matches: bool) -> None:
    assert is_excerpt_of(excerpt(*lines), SOURCE) is matches


PACKAGE = "src/my_service/"
# A row of the generated project page's table: an answer (perhaps a link), then modules.
VARIES_ROW = re.compile(r"^\| \[?`(\w+)`\]?(?:\([^)]*\))? \| (.+) \|$", re.MULTILINE)


def modules_varying(projects: list[Shown]) -> dict[str, set[str]]:
    """For each answer, the package's modules that differ between two shown projects whose
    answers differ in it alone: present in one of them only, or with other text."""
    varies: dict[str, set[str]] = {}
    for one, other in itertools.combinations(projects, 2):
        differ = [name for name in one.answers if one.answers[name] != other.answers.get(name)]
        if len(differ) != 1:
            continue
        modules = varies.setdefault(differ[0], set())
        for path in one.files.keys() | other.files.keys():
            if path.startswith(PACKAGE) and one.files.get(path) != other.files.get(path):
                modules.add(path.removeprefix(PACKAGE))
    return varies


def test_the_generated_project_page_names_the_modules_each_answer_changes(
    shown_projects: list[Shown],
) -> None:
    page = (DOCS / "generated-project.md").read_text(encoding="utf-8")
    section = page[page.index("### What varies with your answers") :]
    section = section[: section.index("\n#", 1)]
    named = {
        row.group(1): set(re.findall(r"`([^`]+)`", row.group(2)))
        for row in VARIES_ROW.finditer(section)
    }
    varying = modules_varying(shown_projects)
    wrong = []
    for answer in sorted(named.keys() | varying.keys()):
        said, true = named.get(answer, set()), varying.get(answer, set())
        if said != true:
            wrong.append(
                f"{answer}: not named {sorted(true - said)}, "
                f"named but the same {sorted(said - true)}"
            )
    assert not wrong, "generated-project.md, What varies with your answers:\n" + "\n".join(wrong)
