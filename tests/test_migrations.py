"""Every combination's migrations, applied for real to its database (a real PostgreSQL or
MariaDB, or a SQLite file), build exactly the schema the app creates from its models in
development, and the app leaves the schema alone in production. A model change gets its
migration the way the README says."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
from pathlib import Path

from support.combinations import Combination
from support.databases import migrate_command, sqlite_file
from support.programs import postgres_bin
from tests.combinations import combinations_where
from tests.projects import (
    SLUG,
    check_command,
    check_output_is_clean,
    database_env,
    empty_database,
    query,
    run,
    start_up,
    tables,
)

TABLES = ("items", "jobs", "changes")


def schema(combination: Combination, url: str) -> str:
    """The tables' definitions as the database itself reports them."""
    if combination.database == "mysql":
        return "\n".join(
            row for table in TABLES for row in query(combination, url, f"SHOW CREATE TABLE {table}")
        )
    if combination.database == "postgresql":
        selection = [arg for table in TABLES for arg in ("--table", table)]
        dump = subprocess.run(
            [postgres_bin("pg_dump"), "--schema-only", "--no-owner", *selection, url],
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
    with contextlib.closing(sqlite3.connect(sqlite_file(url))) as connection:
        return "\n".join(
            f"{table} {pragma}: {row}"
            for table in TABLES
            for pragma in ("table_xinfo", "index_list", "foreign_key_list")
            for row in connection.execute(f"PRAGMA {pragma}({table})")
        )


# The task queue and its broker change no table.
@combinations_where(lambda c: c.task_queue == "background")
def test_migrations_build_the_schema_the_app_creates(
    project: Path, venv: Path, combination: Combination, tmp_path: Path
) -> None:
    """The project's own tests/test_migrations.py checks the migrations against the models with
    the ORM's tool; test_update.py takes a database the previous release created through them."""
    migrated = empty_database(combination, "migrated", tmp_path)
    run(migrate_command(combination, venv), project, database_env(migrated, "production"))

    created = empty_database(combination, "created", tmp_path)
    # In production the app leaves the schema to the migrations; in development it creates it.
    start_up(project, database_env(created, "production"), tmp_path)
    assert not set(TABLES) & tables(combination, created)
    start_up(project, database_env(created, "development"), tmp_path)
    assert set(TABLES) <= tables(combination, created)
    assert schema(combination, migrated) == schema(combination, created)


@combinations_where(lambda c: c.orm == "sqlalchemy" and c.task_queue == "background")
def test_alembic_writes_the_sql_of_the_migrations_offline(
    project: Path, venv: Path, combination: Combination, tmp_path: Path
) -> None:
    """`alembic upgrade head --sql`: the SQL for a database administrator, with no connection."""
    url = empty_database(combination, "offline", tmp_path)
    command = [*migrate_command(combination, venv), "--sql"]
    output = run(command, project, database_env(url, "production"))
    for table in ("items", "jobs"):
        assert f"CREATE TABLE IF NOT EXISTS {table}" in output, output
    assert "CREATE TABLE changes" in output, output
    assert not set(TABLES) & tables(combination, url)


NEW_COLUMN = {
    "sqlalchemy": (
        "    quantity: Mapped[int] = mapped_column(default=0)\n",
        "    price: Mapped[int] = mapped_column(default=0)\n",
    ),
    "tortoise": (
        "    quantity = fields.IntField(default=0)\n",
        "    price = fields.IntField(default=0)\n",
    ),
}


def revision_command(combination: Combination, venv: Path) -> list[str]:
    """The README's command that writes the migration for a model change."""
    if combination.orm == "tortoise":
        return [str(venv / "bin" / "aerich"), "migrate", "--name", "add_price_to_items"]
    return [str(venv / "bin" / "alembic"), "revision", "--autogenerate", "-m", "add a price"]


@combinations_where(lambda c: c.task_queue == "background")
def test_a_model_change_gets_a_clean_migration_that_applies(
    project: Path, venv: Path, combination: Combination, tmp_path: Path, mypy_cache: Path
) -> None:
    """The workflow the README describes: change a model, write its migration with the ORM's
    tool, apply it (and, with Alembic, undo it). The new migration is lint-, format- and
    type-clean as written. (The migrations do not depend on the task queue.)"""
    models = project / "src" / SLUG / "models.py"
    original = models.read_text()
    anchor, column = NEW_COLUMN[combination.orm]
    assert anchor in original
    before = set((project / "migrations").rglob("*.py"))
    url = empty_database(combination, "revision", tmp_path)
    env = database_env(url, "development")
    try:
        run(migrate_command(combination, venv), project, env)
        models.write_text(original.replace(anchor, anchor + column))
        run(revision_command(combination, venv), project, env)
        [written] = set((project / "migrations").rglob("*.py")) - before
        assert "price" in written.read_text()
        for tool in (["ruff", "check"], ["ruff", "format", "--check"], ["mypy"]):
            command = [str(venv / "bin" / tool[0]), *tool[1:], str(written)]
            run(command, project, {"MYPY_CACHE_DIR": str(mypy_cache)})

        run(migrate_command(combination, venv), project, env)
        check_output_is_clean(combination, run(check_command(combination, venv), project, env))
        assert "price" in schema(combination, url)
        if combination.orm == "sqlalchemy":
            run([str(venv / "bin" / "alembic"), "downgrade", "-1"], project, env)
            assert "price" not in schema(combination, url)
    finally:
        models.write_text(original)
        for path in set((project / "migrations").rglob("*.py")) - before:
            path.unlink()
