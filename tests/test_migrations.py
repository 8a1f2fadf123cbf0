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
    SLUG,
    combination_param,
    create_database,
    migrate_command,
    project_env,
    run,
    sqlalchemy_combination_param,
    sqlite_url,
)
from tests.services import postgres_bin

TABLES = ("items", "jobs")

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


def sqlite_file(url: str) -> str:
    return "/" + url.split("://", 1)[1].lstrip("/")


def tables(combination: Combination, url: str) -> set[str]:
    """The names of the tables in the database's default schema."""
    if combination.database == "postgresql":
        query = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        listing = subprocess.run(
            [postgres_bin("psql"), url, "--tuples-only", "--no-align", "--command", query],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return set(listing.split())
    with sqlite3.connect(sqlite_file(url)) as connection:
        query = "SELECT name FROM sqlite_master WHERE type = 'table'"
        return {name for (name,) in connection.execute(query)}


def start_up(project: Path, venv: Path, url: str, mode: str, tmp_path: Path) -> None:
    """Run the app's lifespan (start-up and shutdown) once."""
    script = tmp_path / "start_up.py"
    script.write_text(START_UP)
    run([str(venv / "bin" / "python"), str(script)], project, environment(url, mode))


def check_command(combination: Combination, venv: Path) -> list[str]:
    """The ORM tool's own comparison of the models with the migrations."""
    if combination.orm == "tortoise":
        return [str(venv / "bin" / "aerich"), "migrate", "--name", "check"]
    return [str(venv / "bin" / "alembic"), "check"]


@combination_param
def test_migrations_build_the_schema_of_the_models(
    project: Path, venv: Path, combination: Combination, tmp_path: Path
) -> None:
    migrated = database(combination, "migrated", tmp_path)
    run(migrate_command(combination, venv), project, environment(migrated, "production"))
    migrations = sorted(p.name for p in (project / "migrations").rglob("*.py"))
    output = run(check_command(combination, venv), project, environment(migrated, "production"))
    if combination.orm == "tortoise":
        assert "No changes detected" in output, output
    else:
        assert "No new upgrade operations detected" in output, output
    assert sorted(p.name for p in (project / "migrations").rglob("*.py")) == migrations

    created = database(combination, "created", tmp_path)
    start_up(project, venv, created, "development", tmp_path)
    assert set(TABLES) <= tables(combination, created)
    expected = schema(combination, created)
    assert schema(combination, migrated) == expected

    # The tables a development server created are taken over: the migrations apply over them.
    run(migrate_command(combination, venv), project, environment(created, "development"))
    run(check_command(combination, venv), project, environment(created, "development"))
    assert schema(combination, created) == expected


@combination_param
def test_production_start_up_leaves_the_schema_to_the_migrations(
    project: Path, venv: Path, combination: Combination, tmp_path: Path
) -> None:
    url = database(combination, "production", tmp_path)
    start_up(project, venv, url, "production", tmp_path)
    assert not set(TABLES) & tables(combination, url)
    start_up(project, venv, url, "test", tmp_path)
    assert set(TABLES) <= tables(combination, url)


@sqlalchemy_combination_param
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
