"""The apps the benchmark serves: each generated stack (a combination of answers, rendered,
installed, its database migrated and filled) and the hand-written references in
bench/references/, served from the generated project's environment, so that both run the same
library versions, under gunicorn with the project's own gunicorn.conf.py."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mirakuru import HTTPExecutor
from mirakuru.exceptions import ExecutorError

from bench.databases import Server
from support.combinations import Combination, combination_with, render
from support.databases import migrate_command
from support.services import HOST, free_port

HERE = Path(__file__).resolve().parent
WORKERS = 2
POOL_SIZE, MAX_OVERFLOW = 5, 10
START_SECONDS = 60

STACKS: dict[str, Combination] = {
    "async": combination_with(database="postgresql"),
    "sync": combination_with(database="postgresql", db_mode="sync"),
    "tortoise": combination_with(database="postgresql", orm="tortoise"),
    "async-mysql": combination_with(database="mysql"),
    "sync-mysql": combination_with(database="mysql", db_mode="sync"),
    "tortoise-mysql": combination_with(database="mysql", orm="tortoise"),
}


@dataclass(frozen=True)
class App:
    name: str
    stack: str  # the generated project whose environment (and gunicorn.conf.py) serves it
    module: str | None = None  # a reference app in bench/references; None: the generated app
    peer: str | None = None  # the app it is compared with
    env: tuple[tuple[str, str], ...] = ()  # settings of its own

    @property
    def key(self) -> str:
        """The app's name, as a database or file name may spell it."""
        return re.sub(r"[^a-z0-9]+", "_", self.name.lower()).strip("_")


# The fastest way to read a row from Python, on each database: what the hardware allows.
REFERENCES = {"postgresql": "raw asyncpg (hand-written)", "mysql": "raw asyncmy (hand-written)"}
# Each stack's apps: its hand-written peer and the generated app; the async stacks also run the
# raw driver's reference.
STACK_APPS = [
    ("async", "async SQLAlchemy", "sqlalchemy_async_app"),
    ("sync", "sync SQLAlchemy", "sqlalchemy_sync_app"),
    ("tortoise", "Tortoise", "tortoise_app"),
]


def all_apps() -> list[App]:
    apps = []
    for database, suffix in (("postgresql", ""), ("mysql", "-mysql")):
        on = " on MySQL" if suffix else ""
        raw = REFERENCES[database]
        apps.append(App(raw, f"async{suffix}", f"{raw.split()[1]}_app"))
        for stack, name, module in STACK_APPS:
            peer = f"{name}{on} (hand-written)"
            apps.append(App(peer, f"{stack}{suffix}", module))
            apps.append(App(f"{name}{on} (generated)", f"{stack}{suffix}", peer=peer))
    # The cost of the metrics: each generated app again, with them on, against itself without.
    return apps + [
        App(
            f"{app.name.removesuffix(' (generated)')} (generated, metrics on)",
            app.stack,
            peer=app.name,
            env=(("METRICS", "true"),),
        )
        for app in apps
        if app.module is None
    ]


APPS = all_apps()


def reference(app: App) -> str:
    """The raw driver's reference for the app's database."""
    return REFERENCES[STACKS[app.stack].database]


def generated_app(stack: str) -> App:
    """The stack's generated app, with its metrics off."""
    return next(a for a in APPS if a.stack == stack and a.module is None)


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a command: its output; the benchmark stops with the whole output if it fails."""
    result = subprocess.run(
        command, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"`{' '.join(command)}` failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def prepare(combination: Combination, workdir: Path, server: Server) -> tuple[Path, dict[str, str]]:
    """The combination's project, rendered and installed, and its database, migrated and
    filled: the project and the settings it is served with."""
    answers = {**combination.data, "project_name": "Bench", "project_slug": "bench_app"}
    project = render(workdir / combination.id, answers)
    isolated = {"VIRTUAL_ENV": "", "UV_PROJECT_ENVIRONMENT": ""}
    run(["uv", "sync", "--quiet", "--python", sys.executable], project, isolated)
    database = server.create(f"bench_{combination.id.replace('-', '_')}")
    env = {
        **isolated,
        "DATABASE_URL": database,
        "ENVIRONMENT": "production",
        "DB_POOL_SIZE": str(POOL_SIZE),
        "DB_MAX_OVERFLOW": str(MAX_OVERFLOW),
        "WEB_CONCURRENCY": str(WORKERS),
        "GUNICORN_DRAIN_SECONDS": "0",
        "HOME": str(workdir),
        # The references keep no metrics: the generated apps are compared without theirs.
        "METRICS": "false",
    }
    run(migrate_command(combination, project / ".venv"), project, env)
    server.fill(env["DATABASE_URL"])
    return project, env


def copy_database(server: Server, url: str, app: App) -> str:
    """A new database with the rows of the one at `url`, for `app`."""
    # Within PostgreSQL's 63 characters and MySQL's 64.
    return server.create(f"bench_{app.key}"[:63], source=url.rsplit("/", 1)[1])


@contextlib.contextmanager
def serve(app: App, project: Path, env: dict[str, str], log: Path) -> Iterator[str]:
    """The app under gunicorn with the project's gunicorn.conf.py, on a free loopback port,
    once it answers a read: its base URL. Stopped (its process group) when the block ends."""
    base = f"http://{HOST}:{free_port()}"
    command = [str(project / ".venv" / "bin" / "gunicorn"), "-c", "gunicorn.conf.py"]
    if app.module:
        command += ["--pythonpath", str(HERE / "references"), f"{app.module}:app"]
    with log.open("wb") as output:
        server = HTTPExecutor(
            command,
            f"{base}/items/1",
            status=200,
            method="GET",
            cwd=str(project),
            envvars={**env, "BIND": base.removeprefix("http://")},
            timeout=START_SECONDS,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            server.start()
        except ExecutorError as exc:
            raise SystemExit(f"{app.name} did not start ({exc}):\n{log.read_text()}") from exc
        try:
            yield base
        finally:
            server.stop()
