"""A rendered combination as the tests use it: its answers, its virtual environment, the
servers it is given, and running its tools."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.combinations import COMBINATIONS, Combination
from tests.services import postgres_bin

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
    """The project's tools must not see this repository's virtual environment."""
    return {"VIRTUAL_ENV": "", "UV_PROJECT_ENVIRONMENT": ""}


def database_url_for(combination: Combination) -> str:
    """A database of the combination's own on the suite's PostgreSQL server."""
    server = os.environ["POSTGRES_URL"].rsplit("/", 1)[0]
    return f"{server}/cf_{combination.id.replace('-', '_')}"


def create_database(combination: Combination, suffix: str = "", empty: bool = False) -> str:
    """The combination's database (see `database_url_for`; a `suffix` names another one),
    created if it is missing; with `empty`, dropped and created anew."""
    url = database_url_for(combination) + (f"_{suffix}" if suffix else "")
    name = url.rsplit("/", 1)[1]
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


def migrate_command(combination: Combination, venv: Path) -> list[str]:
    """The project's command that applies its migrations."""
    if combination.orm == "tortoise":
        return [str(venv / "bin" / "aerich"), "upgrade"]
    return [str(venv / "bin" / "alembic"), "upgrade", "head"]


def redis_url_for(combination: Combination) -> str:
    """A Redis database of the combination's own, so that parallel runs share no queue."""
    return f"{os.environ['REDIS_URL']}/{COMBINATIONS.index(combination) + 1}"


COMBINATION_PARAMS = [
    pytest.param(c, id=c.id, marks=pytest.mark.xdist_group(c.id)) for c in COMBINATIONS
]
combination_param = pytest.mark.parametrize("combination", COMBINATION_PARAMS, indirect=True)
sqlalchemy_combination_param = pytest.mark.parametrize(
    "combination",
    [p for c, p in zip(COMBINATIONS, COMBINATION_PARAMS, strict=True) if c.orm == "sqlalchemy"],
    indirect=True,
)
