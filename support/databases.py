"""The databases of a combination's kind: running SQL on one, and the project's command that
migrates it."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pymysql

from support.combinations import Combination
from support.programs import postgres_bin


def mysql_connection(url: str) -> pymysql.Connection:
    """A connection to the MySQL database at `url` (of any driver), committing each statement."""
    parts = urlsplit(url)
    return pymysql.connect(
        host=parts.hostname,
        port=parts.port or 3306,
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        database=parts.path.lstrip("/") or None,
        autocommit=True,
    )


def sqlite_file(url: str) -> str:
    """The path of the SQLite file a URL names (an absolute one, as the tests write them)."""
    return "/" + url.split("://", 1)[1].lstrip("/")


def query(database: str, url: str, statement: str) -> list[str]:
    """Run one SQL statement on the `database` (`postgresql`, `mysql` or `sqlite`) at `url`:
    its rows, the columns joined by `|`."""
    if database == "mysql":
        with contextlib.closing(mysql_connection(url)) as connection, connection.cursor() as cursor:
            cursor.execute(statement)
            return ["|".join(map(str, row)) for row in cursor.fetchall()]
    if database == "postgresql":
        output = subprocess.run(
            [postgres_bin("psql"), url, "--tuples-only", "--no-align", "--command", statement],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return output.splitlines()
    with contextlib.closing(sqlite3.connect(sqlite_file(url))) as connection, connection:
        return ["|".join(map(str, row)) for row in connection.execute(statement)]


def migrate_command(combination: Combination, venv: Path) -> list[str]:
    """The project's command that applies its migrations."""
    if combination.orm == "tortoise":
        return [str(venv / "bin" / "aerich"), "upgrade"]
    return [str(venv / "bin" / "alembic"), "upgrade", "head"]
