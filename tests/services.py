"""Throwaway PostgreSQL and Redis servers on loopback, for the test suite.

The suite uses the servers named by POSTGRES_URL and REDIS_URL when they are set. Otherwise it
starts its own from the machine's `initdb`/`pg_ctl` and `redis-server`, on free loopback ports,
in a temporary directory, and stops them when the run ends.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

STARTUP_SECONDS = 60


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


def postgres_bin(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        raise ServiceError(
            f"PostgreSQL's {name} was not found: install the PostgreSQL server "
            "(e.g. apt-get install postgresql) or set POSTGRES_URL"
        )
    return found


def as_postgres_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run it as the `postgres` user then."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@contextlib.contextmanager
def postgres(workdir: Path) -> Iterator[str]:
    data = workdir / "pgdata"
    log = workdir / "postgres.log"
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres")
    subprocess.run(
        as_postgres_user(
            [postgres_bin("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8"]
        ),
        check=True,
        capture_output=True,
    )
    port = free_port()
    process = subprocess.Popen(
        as_postgres_user(
            [
                postgres_bin("postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-h",
                "127.0.0.1",
                "-k",
                str(workdir),
                "-c",
                "max_connections=300",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]
        ),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, process, log, "PostgreSQL")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        stop(process)


@contextlib.contextmanager
def redis(workdir: Path) -> Iterator[str]:
    server = shutil.which("redis-server")
    if server is None:
        raise ServiceError(
            "redis-server was not found: install Redis (e.g. apt-get install redis-server) "
            "or set REDIS_URL"
        )
    log = workdir / "redis.log"
    port = free_port()
    process = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--databases",
            "64",
            "--dir",
            str(workdir),
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, process, log, "Redis")
        yield f"redis://127.0.0.1:{port}"
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


SERVICES: dict[str, Callable[[Path], contextlib.AbstractContextManager[str]]] = {
    "POSTGRES_URL": postgres,
    "REDIS_URL": redis,
}


@contextlib.contextmanager
def ensure_services() -> Iterator[dict[str, str]]:
    """The URL of each service: from the environment, or of a server started for this run."""
    with contextlib.ExitStack() as stack:
        urls: dict[str, str] = {}
        for variable, start in SERVICES.items():
            if os.environ.get(variable):
                urls[variable] = os.environ[variable]
                continue
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cf-svc-")))
            urls[variable] = stack.enter_context(start(workdir))
        yield urls


def unwind(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C does, so the servers are stopped on the way out."""
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    """`python -m tests.services COMMAND...`: run COMMAND with the servers' URLs in its
    environment, starting servers for the variables that are not set, and stop them after."""
    if not argv:
        print("usage: python -m tests.services COMMAND [ARG...]", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, unwind)
    try:
        with ensure_services() as urls:
            for variable, url in urls.items():
                print(f"{variable}={url}", file=sys.stderr)
            return subprocess.run(argv, env={**os.environ, **urls}).returncode
    except ServiceError as exc:
        print(f"The test servers are not available: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Interrupted: the test servers are stopped.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
