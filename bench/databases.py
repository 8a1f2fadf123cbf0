"""The database server a stack reads from, PostgreSQL's or MariaDB's: a database of each app's
own on it, filled with the rows the apps read, and what the server counts of their
connections."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from support.databases import mysql_connection, query

ROWS = 10_000


@dataclass(frozen=True)
class Server:
    """The server of the `kind` of database (`postgresql` or `mysql`) at `url` (the URL of a
    database on it; others replace its last part)."""

    kind: str
    url: str

    def at(self, name: str) -> str:
        return f"{self.url.rsplit('/', 1)[0]}/{name}"

    def value(self, url: str, statement: str) -> str:
        """The one value the statement answers, on the database at `url`."""
        rows = query(self.kind, url, statement)
        return rows[0] if rows else ""

    def create(self, name: str, source: str | None = None) -> str:
        """A new database `name` (anew if it exists), with the tables and rows of `source`."""
        if self.kind == "postgresql":
            template = f' TEMPLATE "{source}"' if source else ""
            query(self.kind, self.at("postgres"), f'DROP DATABASE IF EXISTS "{name}"')
            query(self.kind, self.at("postgres"), f'CREATE DATABASE "{name}"{template}')
            return self.at(name)
        query(self.kind, self.url, f"DROP DATABASE IF EXISTS `{name}`")
        query(self.kind, self.url, f"CREATE DATABASE `{name}`")
        if source:
            for table in query(self.kind, self.at(source), "SHOW TABLES"):
                query(self.kind, self.at(name), f"CREATE TABLE `{table}` LIKE `{source}`.`{table}`")
                query(
                    self.kind,
                    self.at(name),
                    f"INSERT INTO `{table}` SELECT * FROM `{source}`.`{table}`",
                )
        return self.at(name)

    def fill(self, url: str) -> None:
        """ROWS items in the database at `url`."""
        if self.kind == "postgresql":
            query(
                self.kind,
                url,
                "INSERT INTO items (name, description, quantity)"
                f" SELECT 'item ' || n, NULL, n FROM generate_series(1, {ROWS}) AS n",
            )
            return
        with contextlib.closing(mysql_connection(url)) as connection:
            with connection.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO items (name, description, quantity) VALUES (%s, NULL, %s)",
                    [(f"item {n}", n) for n in range(1, ROWS + 1)],
                )
            connection.commit()

    def connections_opened(self, url: str) -> int:
        """Connections opened so far: to the database at `url` (PostgreSQL), or to the server
        (MySQL counts no more finely; the apps of a stack served beside the one measured keep
        theirs open)."""
        if self.kind == "postgresql":
            sessions = "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
            return int(self.value(url, sessions))
        return int(
            self.value(
                url,
                "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS"
                " WHERE VARIABLE_NAME = 'CONNECTIONS'",
            )
        )

    def idle_in_transaction(self, url: str) -> int:
        """Connections to the database at `url` that wait, idle, inside a transaction."""
        if self.kind == "postgresql":
            statement = (
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND state = 'idle in transaction'"
            )
        else:
            statement = (
                "SELECT count(*) FROM information_schema.INNODB_TRX t"
                " JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id"
                " WHERE p.DB = DATABASE() AND p.COMMAND = 'Sleep'"
            )
        return int(self.value(url, statement))

    def version(self) -> str:
        if self.kind == "postgresql":
            return f"PostgreSQL {self.value(self.url, 'SHOW server_version')}"
        return f"MariaDB {self.value(self.url, 'SELECT VERSION()').split('-')[0]}"
