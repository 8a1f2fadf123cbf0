"""Temporary template repositories with release tags, built from this repository's history and
working tree, so that update tests need no network and no published release.

A release is a commit named `Release X.Y.Z` (and tagged `vX.Y.Z`; tags are not needed here).
"""

from __future__ import annotations

import functools
import io
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from support.combinations import REPO_ROOT, Combination

RELEASE = re.compile(r"^Release (\d+\.\d+\.\d+)$")
TEMPLATE_PATHS = ("copier.yml", "template")


def git(*args: str, cwd: Path = REPO_ROOT) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


@dataclass(frozen=True)
class Release:
    commit: str
    version: str

    @property
    def tag(self) -> str:
        return f"v{self.version}"


def releases() -> list[Release]:
    """Every release in this repository's history, newest first."""
    found = []
    for line in git("log", "--format=%H %s").splitlines():
        commit, _, subject = line.partition(" ")
        if match := RELEASE.match(subject):
            found.append(Release(commit, match.group(1)))
    return found


def files_at(commit: str) -> dict[str, bytes]:
    """The template's files (copier.yml and template/) at a commit."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, *TEMPLATE_PATHS],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {
            member.name: tar.extractfile(member).read()  # type: ignore[union-attr]
            for member in tar.getmembers()
            if member.isfile()
        }


def working_files() -> dict[str, bytes]:
    """The template's files in the working tree, committed or not (ignored files aside)."""
    names = git("ls-files", "-co", "--exclude-standard", "--", *TEMPLATE_PATHS).splitlines()
    return {name: (REPO_ROOT / name).read_bytes() for name in names if (REPO_ROOT / name).is_file()}


def previous_release() -> Release:
    """The newest release whose template differs from the working tree's (right after a
    release, the one before it), or else the newest release."""
    found = releases()
    assert found, "No release in this repository's history"
    current = working_files()
    return next((r for r in found if files_at(r.commit) != current), found[0])


@functools.cache
def previous_choices() -> dict[str, set[str]]:
    """The values the previous release's copier.yml offers for each question with choices."""
    questions = yaml.safe_load(files_at(previous_release().commit)["copier.yml"])
    return {
        name: {
            choice["value"] if isinstance(choice, dict) else choice
            for choice in question["choices"].values()
        }
        for name, question in questions.items()
        if isinstance(question, dict) and "choices" in question
    }


def offered_by_previous_release(combination: Combination) -> bool:
    """Whether the previous release can generate the combination: it may lack a newer answer
    (a database or a broker)."""
    choices = previous_choices()
    return all(value in choices.get(name, {value}) for name, value in combination.data.items())


def write_files(repo: Path, files: dict[str, bytes]) -> None:
    for path in TEMPLATE_PATHS:
        target = repo / path
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    for name, content in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(content)


def commit(repo: Path, message: str, tag: str | None = None) -> str:
    git("add", "-A", cwd=repo)
    git("commit", "--quiet", "--allow-empty", "-m", message, cwd=repo)
    if tag:
        git("tag", "-a", tag, "-m", message, cwd=repo)
    return git("rev-parse", "HEAD", cwd=repo).strip()


@dataclass(frozen=True)
class TemplateRepo:
    path: Path
    previous: Release  # tagged in `path`
    head: str  # the working tree's template, committed on top of it


def release(version: str) -> Release:
    """The release of this version."""
    (found,) = [r for r in releases() if r.version == version]
    return found


def build(dst: Path, previous: Release | None = None) -> TemplateRepo:
    """A repository holding the previous release (or `previous`), tagged, and, on top, the
    working tree."""
    previous = previous or previous_release()
    dst.mkdir(parents=True)
    git("init", "--quiet", "--initial-branch=main", cwd=dst)
    write_files(dst, files_at(previous.commit))
    commit(dst, f"Release {previous.version}", tag=previous.tag)
    write_files(dst, working_files())
    head = commit(dst, "The working tree")
    return TemplateRepo(dst, previous, head)
