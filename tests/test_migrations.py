"""Every combination's migrations, applied for real to its database (a real PostgreSQL, or a
SQLite file): they build exactly the schema the app creates from its models, the ORM's own tool
finds nothing left to migrate, and they take over a database whose tables a development server
created at start-up."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

from tests.combinations import Combination
from tests.projects import (
    check_command,
    check_output_is_clean,
    combination_param,
    combinations_where,
    create_database,
    migrate_command,
    project_env,
    run,
    sqlite_file,
    sqlite_url,
    start_up,
    tables,
)
from tests.services import postgres_bin

TABLES = ("items", "jobs")


def database(combination: Combination, name: str, tmp_path: Path) -> str:
    """An empty database of the combination's kind."""
    if combination.database == "postgresql":
        return create_database(combination, name, empty=True)
    return sqlite_url(combination, tmp_path / f"{name}.db")


def environment(url: str, mode: str) -> dict[str, str]:
    return {**project_env(), "ENVIRONMENT": mode, "DATABASE_URL": url}


def schema(combination: Combination, url: str) -> str:
    """The tables' definitions as the database itself reports them."""
    if combination.database == "postgresql":
        tables = [arg for table in TABLES for arg in ("--table", table)]
        dump = subprocess.run(
            [postgres_bin("pg_dump"), "--schema-only", "--no-owner", *tables, url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        # Comments, blank lines and the random key pg_dump guards its output with.
        return "\n".join(
            line
            for line in dump.splitlines()
            if line and not line.startswith(("--", "\\restrict", "\\unrestrict"))
        )
    with sqlite3.connect(sqlite_file(url)) as connection:
        return "\n".join(
            f"{table} {pragma}: {row}"
            for table in TABLES
            for pragma in ("table_xinfo", "index_list", "foreign_key_list")
            for row in connection.execute(f"PRAGMA {pragma}({table})")
        )


@combination_param
def test_migrations_build_the_schema_of_the_models(
    project: Path, venv: Path, combination: Combination, tmp_path: Path
) -> None:
    migrated = database(combination, "migrated", tmp_path)
    run(migrate_command(combination, venv), project, environment(migrated, "production"))
    migrations = sorted(p.name for p in (project / "migrations").rglob("*.py"))
    output = run(check_command(combination, venv), project, environment(migrated, "production"))
    check_output_is_clean(combination, output)
    assert sorted(p.name for p in (project / "migrations").rglob("*.py")) == migrations

    created = database(combination, "created", tmp_path)
    start_up(project, environment(created, "development"), tmp_path)
    assert set(TABLES) <= tables(combination, created)
    expected = schema(combination, created)
    assert schema(combination, migrated) == expected

    # The tables a development server created are taken over: the migrations apply over them.
    run(migrate_command(combination, venv), project, environment(created, "development"))
    output = run(check_command(combination, venv), project, environment(created, "development"))
    check_output_is_clean(combination, output)
    assert schema(combination, created) == expected


@combination_param
def test_production_start_up_leaves_the_schema_to_the_migrations(
    project: Path, venv: Path, combination: Combination, tmp_path: Path
) -> None:
    url = database(combination, "production", tmp_path)
    start_up(project, environment(url, "production"), tmp_path)
    assert not set(TABLES) & tables(combination, url)
    start_up(project, environment(url, "test"), tmp_path)
    assert set(TABLES) <= tables(combination, url)


@combinations_where(lambda c: c.orm == "sqlalchemy")
def test_alembic_writes_the_sql_of_the_migrations_offline(
    project: Path, venv: Path, combination: Combination, tmp_path: Path
) -> None:
    """`alembic upgrade head --sql`: the SQL for a database administrator, with no connection."""
    url = database(combination, "offline", tmp_path)
    command = [*migrate_command(combination, venv), "--sql"]
    output = run(command, project, environment(url, "production"))
    for table in TABLES:
        assert f"CREATE TABLE IF NOT EXISTS {table}" in output, output
    assert not set(TABLES) & tables(combination, url)
