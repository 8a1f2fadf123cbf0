"""Releases: every release commit has its CHANGELOG entry, versions are semver and grow, and
the oldest Copier the template claims to support renders it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from support.combinations import REPO_ROOT, isolated_copier_settings
from tests import releases

pytestmark = pytest.mark.xdist_group("releases")

CHANGELOG = REPO_ROOT / "CHANGELOG.md"


UNRELEASED = "Unreleased"


def changelog_headings() -> list[str]:
    return re.findall(r"^## (\S+)", CHANGELOG.read_text(), flags=re.MULTILINE)


def changelog_versions() -> list[str]:
    """The released versions: every entry but the changes not yet released, on top."""
    headings = changelog_headings()
    return headings[1:] if headings[:1] == [UNRELEASED] else headings


def as_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def test_changelog_versions_are_semver_newest_first() -> None:
    versions = changelog_versions()
    assert versions, "CHANGELOG.md lists no release"
    assert UNRELEASED not in versions, "the changes not yet released go on top"
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", v) for v in versions), versions
    assert versions == sorted(versions, key=as_tuple, reverse=True)


def test_every_release_commit_has_a_changelog_entry_saying_what_an_update_needs() -> None:
    text = CHANGELOG.read_text()
    found = releases.releases()
    assert found, "no `Release X.Y.Z` commit in the history"
    for release in found:
        assert release.version in changelog_versions(), release
        entry = text.split(f"## {release.version}", 1)[1].split("\n## ", 1)[0]
        assert "**Updating:**" in entry, f"{release.version} does not say what an update needs"


def test_the_template_needs_no_trust() -> None:
    """No tasks and no migrations: `copier copy` and `copier update` work without --trust."""
    config = yaml.safe_load((REPO_ROOT / "copier.yml").read_text())
    assert not {"_tasks", "_migrations", "_jinja_extensions"} & set(config)


def test_the_minimum_copier_version_renders_the_template(tmp_path: Path) -> None:
    minimum = yaml.safe_load((REPO_ROOT / "copier.yml").read_text())["_min_copier_version"]
    uvx = shutil.which("uvx")
    assert uvx, "uvx (from uv) is needed to run an older Copier"
    isolated_copier_settings()
    result = subprocess.run(
        [
            uvx,
            "--from",
            f"copier=={minimum}",
            "copier",
            "copy",
            "--quiet",
            "--defaults",
            "--vcs-ref",
            "HEAD",
            "--data",
            "database=postgresql",
            "--data",
            "task_queue=celery",
            str(REPO_ROOT),
            str(tmp_path / "project"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "project" / ".copier-answers.yml").is_file()
