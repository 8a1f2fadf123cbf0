"""A rendered combination as the tests use it: its answers, its virtual environment, the
servers it is given, and running its tools."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import pytest

from support import databases
from support.combinations import COMBINATIONS, Combination
from support.programs import Unavailable, in_ci, mariadb_programs, postgres_bin, rabbitmq_programs
from support.services import SERVER_VARIABLES

SLUG = "inventory"
COMMAND_TIMEOUT = 600


def answers_for(combination: Combination) -> dict[str, object]:
    """Non-default pool answers, so the tests see them wired through; a fixed worker count for
    the Celery combinations and the CPU-derived one for the others."""
    return {
        **combination.data,
        "project_name": "Inventory",
        "project_slug": SLUG,
        "pool_size": 3,
        "max_overflow": 4,
        "pool_timeout": 12.5,
        "pool_recycle": 900,
        "workers": 3 if combination.task_queue == "celery" else 0,
    }


def run(
    command: list[str], cwd: Path, env: dict[str, str] | None = None, expect_failure: bool = False
) -> str:
    """Run a command; fail the test with its whole output if it fails (or, with
    `expect_failure`, if it succeeds)."""
    result = subprocess.run(
        command,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )
    output = result.stdout + result.stderr
    if (result.returncode != 0) != expect_failure:
        pytest.fail(f"`{' '.join(command)}` exited with {result.returncode}:\n{output}")
    return output


def project_env() -> dict[str, str]:
    """The project's tools must not see this repository's virtual environment; and they cache
    the bytecode of what they import, as on a user's machine, even where the environment turns
    that off (PYTHONDONTWRITEBYTECODE): each project's processes import the same modules."""
    return {"VIRTUAL_ENV": "", "UV_PROJECT_ENVIRONMENT": "", "PYTHONDONTWRITEBYTECODE": ""}


# A directory listing every environment the run has installed so far (see `share_bytecode`).
ENVIRONMENTS = "COPIER_FASTAPI_TEST_ENVIRONMENTS"


def sync(project: Path, env: dict[str, str]) -> Path:
    """Install the project's environment (`uv sync`, with `env`), with the bytecode the run's
    other environments have compiled for the same files; returns the environment."""
    run(["uv", "sync", "--python", sys.executable], project, env)
    venv = project / ".venv"
    share_bytecode(venv)
    return venv


def share_bytecode(venv: Path) -> None:
    """Link into a new environment the bytecode the run's other environments compiled, where
    they have the same source file, then list the environment for the next ones.

    uv installs each package file as a hard link to its cache, so the projects' environments
    share their sources; but CPython compiles a module on its first import and writes the result
    beside it (`__pycache__`), so each environment compiled them anew: ten seconds of CPU and
    more per project, as much as its whole test suite takes once compiled. A compiled file
    stays valid for every link of its source (CPython checks the source's modification time and
    size, and recompiles where they differ)."""
    listing = os.environ.get(ENVIRONMENTS)
    if not listing:
        return
    tag = f".{sys.implementation.cache_tag}.pyc"
    site = site_packages(venv)
    # An environment synced again (after an update) is listed once.
    listed = Path(listing) / hashlib.sha256(str(venv).encode()).hexdigest()
    for entry in Path(listing).iterdir():
        if entry == listed:
            continue
        other = site_packages(entry.resolve())
        for directory, _, names in os.walk(other):
            if not directory.endswith("__pycache__"):
                continue
            cache = site / Path(directory).relative_to(other)
            for name in names:
                if not name.endswith(tag) or (cache / name).exists():
                    continue
                module = name.removesuffix(tag) + ".py"
                with contextlib.suppress(FileNotFoundError):
                    if (cache.parent / module).samefile(Path(directory).parent / module):
                        cache.mkdir(exist_ok=True)
                        with contextlib.suppress(FileExistsError):
                            os.link(Path(directory) / name, cache / name)
    if not listed.is_symlink():
        listed.symlink_to(venv)


def site_packages(venv: Path) -> Path:
    """The environment's site-packages directory."""
    (site,) = (venv / "lib").glob("python3*/site-packages")
    return site


def assert_own_tests_pass(project: Path, env: dict[str, str], *paths: str) -> None:
    """Run the project's own test suite (or the tests under `paths`) with `env`: it must pass,
    skipping nothing.

    As `python -m pytest`: each compute pool process the tests start then imports nothing
    more than the pool needs (with the `pytest` script as the main module, CPython 3.11's
    multiprocessing runs the script again in every one; the suite takes twice as long)."""
    python = str(project / ".venv" / "bin" / "python")
    command = [python, "-m", "pytest", "-p", "no:cacheprovider", "-q", *paths]
    output = run(command, project, {**project_env(), **env})
    summary = output.strip().splitlines()[-1]
    assert re.search(r"\b\d+ passed\b", summary) and "failed" not in summary, output
    assert "skipped" not in summary, output


def server_url(combination: Combination) -> str:
    """The URL of the suite's server of the combination's database. Skips the test where
    MariaDB is needed and not installed (never in CI: the run fails at its start there)."""
    return suite_service(SERVER_VARIABLES[combination.database])


def database_url_for(combination: Combination) -> str:
    """A database of the combination's own on the suite's server of its kind."""
    server = server_url(combination).rsplit("/", 1)[0]
    return f"{server}/cf_{combination.id.replace('-', '_')}"


def create_database(combination: Combination, suffix: str = "", empty: bool = False) -> str:
    """The combination's database (see `database_url_for`; a `suffix` names another one),
    created if it is missing; with `empty`, dropped and created anew."""
    url = database_url_for(combination) + (f"_{suffix}" if suffix else "")
    name = url.rsplit("/", 1)[1]
    if combination.database == "mysql":
        statements = [f"DROP DATABASE IF EXISTS `{name}`"] if empty else []
        statements.append(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4")
        for statement in statements:
            query(combination, server_url(combination), statement)
        return url
    statements = [f'DROP DATABASE IF EXISTS "{name}"'] if empty else []
    for statement in [*statements, f'CREATE DATABASE "{name}"']:
        result = subprocess.run(
            [postgres_bin("psql"), os.environ["POSTGRES_URL"], "-c", statement],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0 and "already exists" not in result.stderr:
            pytest.fail(f"`{statement}` failed: {result.stderr}")
    return url


def sqlite_url(combination: Combination, path: Path) -> str:
    """The URL of a SQLite file, as the combination's ORM spells it."""
    return f"sqlite://{path}" if combination.orm == "tortoise" else f"sqlite:///{path}"


def empty_database(combination: Combination, name: str, tmp_path: Path) -> str:
    """The URL of an empty database of the combination's kind: on the suite's server of its
    kind, created anew, or a SQLite file in `tmp_path`."""
    if combination.database_server:
        return create_database(combination, name, empty=True)
    return sqlite_url(combination, tmp_path / f"{name}.db")


def database_env(url: str, environment: str) -> dict[str, str]:
    """The project's environment for running against the database at `url`."""
    return {**project_env(), "ENVIRONMENT": environment, "DATABASE_URL": url}


def query(combination: Combination, url: str, statement: str) -> list[str]:
    """Run one SQL statement on the combination's kind of database at `url`: its rows, the
    columns joined by `|`."""
    return databases.query(combination.database, url, statement)


def tables(combination: Combination, url: str) -> set[str]:
    """The names of the tables in the database's default schema."""
    if combination.database == "mysql":
        statement = "SELECT table_name FROM information_schema.tables"
        statement += " WHERE table_schema = DATABASE()"
    elif combination.database == "postgresql":
        statement = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    else:
        statement = "SELECT name FROM sqlite_master WHERE type = 'table'"
    return set(query(combination, url, statement))


def check_command(combination: Combination, venv: Path) -> list[str]:
    """The ORM tool's own comparison of the models with the migrations."""
    if combination.orm == "tortoise":
        return [str(venv / "bin" / "aerich"), "migrate", "--name", "check"]
    return [str(venv / "bin" / "alembic"), "check"]


def check_output_is_clean(combination: Combination, output: str) -> None:
    """What `check_command` says when there is nothing left to migrate."""
    clean = "No changes detected" if combination.orm == "tortoise" else "No new upgrade operations"
    assert clean in output, output


START_UP = f"""\
import asyncio

from {SLUG}.main import create_app


async def main() -> None:
    app = create_app()
    async with app.router.lifespan_context(app):
        pass


if __name__ == "__main__":
    asyncio.run(main())
"""


def start_up(project: Path, env: dict[str, str], tmp_path: Path) -> None:
    """Run the app's lifespan (start-up and shutdown) once, with `env`."""
    script = tmp_path / "start_up.py"
    script.write_text(START_UP)
    run([str(project / ".venv" / "bin" / "python"), str(script)], project, env)


def unavailable(exc: Unavailable) -> NoReturn:
    """Skip the test that needs a server this machine does not have; fail it in CI."""
    if in_ci():
        pytest.fail(str(exc), pytrace=False)
    pytest.skip(str(exc))


# The servers no PyPI package ships, by the variable that names them: the suite may lack them.
MACHINE_ONLY = {"MYSQL_URL": mariadb_programs, "RABBITMQ_URL": rabbitmq_programs}


def suite_service(variable: str) -> str:
    """The URL of the suite's server that `variable` names. Skips the test where that server
    is MariaDB or RabbitMQ and the machine has none (never in CI: the run fails at its start
    there)."""
    if variable not in os.environ and variable in MACHINE_ONLY:
        try:
            MACHINE_ONLY[variable]()
        except Unavailable as exc:
            unavailable(exc)
    return os.environ[variable]


def broker_env(combination: Combination, index: int | None = None) -> dict[str, str]:
    """The combination's broker setting, if it has one: a Redis database or a RabbitMQ virtual
    host of its own (by default, numbered after the combination), so that parallel runs share
    no queue. Skips the test where RabbitMQ is needed and not installed (never in CI: the run
    fails at its start there)."""
    variable = combination.broker_variable
    if variable is None:
        return {}
    number = COMBINATIONS.index(combination) + 1 if index is None else index
    return {variable: f"{suite_service(variable).rstrip('/')}/{number}"}
