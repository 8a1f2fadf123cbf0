"""Throwaway PostgreSQL, MariaDB, Redis and RabbitMQ servers on loopback, for the test suite and
the benchmark.

They use the servers named by POSTGRES_URL, MYSQL_URL, REDIS_URL and RABBITMQ_URL when these are
set. Otherwise they start their own, on free loopback ports, in temporary directories, from the
programs support.programs finds, and stop them when the run ends. Without MariaDB or RabbitMQ
(which no PyPI package ships), the tests that need them skip, saying how to install them, except
in CI, where the run fails.

Each server process is a mirakuru executor: started in a process group of its own, waited for
until it answers on its port, stopped by a signal to that group (then killed, if it outlives the
timeout), with whatever it started outside that group (RabbitMQ's Erlang helpers), which
mirakuru finds by a mark it puts in their environment. What is left here is what mirakuru leaves
to its users: each server's data directory and settings, PostgreSQL run as an unprivileged user
when the suite runs as root, RabbitMQ's own Erlang port mapper, restarts on the same port and
data, and one server of each kind for a whole run, started before pytest-xdist starts its workers
(per-process fixtures such as pytest-postgresql's or pytest-redis's start one per worker).
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Self

from mirakuru import TCPExecutor
from mirakuru.exceptions import ExecutorError

from support.programs import (
    ServiceError,
    Unavailable,
    as_user,
    in_ci,
    mariadb_programs,
    postgres_bin,
    rabbitmq_programs,
    reachable_programs,
    redis_server,
    server_user,
)

STARTUP_SECONDS = 60
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """A server the suite starts in `workdir`, on a free loopback port: `url` names it. As a
    context manager it is started, then stopped for good; `stop` and `start` in between restart
    it on the same port and data (as a database or broker restart does)."""

    name: str
    url: str
    executor: TCPExecutor

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log = workdir / f"{self.name.lower()}.log"
        self.output: IO[bytes] | None = None

    def executor_for(
        self,
        command: list[str],
        port: int | None = None,
        executor: type[TCPExecutor] = TCPExecutor,
        **options: Any,
    ) -> TCPExecutor:
        """An executor that runs `command` in `workdir`, its output in the log, and waits until
        it listens on `port` (by default, the server's)."""
        if self.output is None:
            self.output = self.log.open("ab")
        return executor(
            command,
            HOST,
            port or self.port,
            cwd=str(self.workdir),
            timeout=STARTUP_SECONDS,
            stdin=subprocess.DEVNULL,
            stdout=self.output,
            stderr=subprocess.STDOUT,
            **options,
        )

    def start(self) -> None:
        self.launch(self.executor)

    def launch(self, executor: TCPExecutor) -> None:
        """Start one of the server's processes, and wait until it listens."""
        try:
            executor.start()
        except ExecutorError as exc:
            raise ServiceError(f"{self.name} did not start ({exc}):\n{self.logs()}") from exc

    def stop(self) -> None:
        self.executor.stop()

    def close(self) -> None:
        """Release what outlives a stop: the log, and whatever a server says."""
        if self.output is not None:
            self.output.close()

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.stop()
        finally:
            self.close()


class Postgres(Server):
    """A PostgreSQL server; its user `postgres` is trusted. It stops by a fast shutdown: it
    disconnects its clients and stops."""

    name = "PostgreSQL"

    def __init__(self, workdir: Path, env: Mapping[str, str] = os.environ) -> None:
        super().__init__(workdir)
        user = server_user()
        programs = reachable_programs(
            {name: postgres_bin(name, env) for name in ("initdb", "postgres")}, user, workdir
        )
        if user is not None:
            shutil.chown(workdir, user)
        data = workdir / "pgdata"
        initdb = [programs["initdb"], "-D", str(data), "-U", "postgres", "-A", "trust"]
        subprocess.run(
            [*initdb, "-E", "UTF8"], cwd=workdir, check=True, capture_output=True, **as_user(user)
        )
        self.url = f"postgresql://postgres@{HOST}:{self.port}/postgres"
        settings = {
            "max_connections": "300",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        command = [programs["postgres"], "-D", str(data), "-p", str(self.port)]
        command += ["-h", HOST, "-k", str(workdir)]
        command += [f"--{name}={value}" for name, value in settings.items()]
        self.executor = self.executor_for(
            command, stop_signal=signal.SIGINT, popen_kwargs=as_user(user)
        )


class Redis(Server):
    """A Redis server with 64 databases; a restart keeps none of its data."""

    name = "Redis"

    def __init__(self, workdir: Path, env: Mapping[str, str] = os.environ) -> None:
        super().__init__(workdir)
        self.url = f"redis://{HOST}:{self.port}"
        command = [redis_server(env), "--port", str(self.port), "--bind", HOST]
        command += ["--save", "", "--appendonly", "no", "--databases", "64"]
        command += ["--dir", str(workdir)]
        self.executor = self.executor_for(command)


# The virtual hosts a test RabbitMQ has, beside "/": one per combination, as Redis has databases.
RABBITMQ_VHOSTS = 64


def rabbitmq_password_hash(password: str) -> str:
    """`password` as RabbitMQ stores it (rabbit_password_hashing_sha256: a 4-byte salt, then
    the SHA-256 of the salt and the password, in base64)."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def amqp_answers(port: int) -> bool:
    """Whether an AMQP broker answers on the port (with its protocol header, or a connection
    start): a listening port alone is not enough, RabbitMQ opens it before it is ready."""
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.5) as sock:
        sock.settimeout(2)
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        return bool(sock.recv(8))
    return False


class AMQPExecutor(TCPExecutor):
    """A broker, started once it answers AMQP on its port."""

    def after_start_check(self) -> bool:
        return amqp_answers(self.port)


# The accounts the generated projects' CI workflow (template/.github/workflows/ci.yml.jinja) gives
# its tests, which the suite's own servers accept too: each combination's own tests run with the
# environment that workflow sets (tests/test_combinations.py), credentials and all.
WORKFLOW_ACCOUNTS = {"mysql": ("root", "mysql"), "rabbitmq": ("ci", "ci")}


class RabbitMQ(Server):
    """A RabbitMQ server with an Erlang port mapper of its own (Erlang would otherwise start one
    on port 4369, which outlives the server); a restart keeps its durable queues and their
    persistent messages. Its user `tests` has a password hard to guess (as production settings
    demand), and the generated workflow's user (WORKFLOW_ACCOUNTS) the workflow's password; both
    have every right on the virtual hosts "/" and "1" to RABBITMQ_VHOSTS."""

    name = "RabbitMQ"

    def __init__(self, workdir: Path) -> None:
        program, epmd = rabbitmq_programs()
        super().__init__(workdir)
        epmd_port, dist_port = free_port(), free_port()
        password = secrets.token_hex(16)
        self.url = f"amqp://tests:{password}@{HOST}:{self.port}//"
        vhosts = ["/", *map(str, range(1, RABBITMQ_VHOSTS + 1))]
        accounts = {
            "tests": password,
            WORKFLOW_ACCOUNTS["rabbitmq"][0]: WORKFLOW_ACCOUNTS["rabbitmq"][1],
        }
        definitions = {
            "users": [
                {
                    "name": user,
                    "password_hash": rabbitmq_password_hash(secret),
                    "hashing_algorithm": "rabbit_password_hashing_sha256",
                    "tags": ["administrator"] if user == "tests" else [],
                }
                for user, secret in accounts.items()
            ],
            "vhosts": [{"name": vhost} for vhost in vhosts],
            "permissions": [
                {"user": user, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}
                for user in accounts
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
        env = {
            "HOME": str(workdir),
            "ERL_EPMD_PORT": str(epmd_port),
            "ERL_EPMD_ADDRESS": HOST,
            "RABBITMQ_NODENAME": f"test{self.port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": HOST,
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
        mapper = [epmd, "-port", str(epmd_port), "-address", HOST]
        self.epmd = self.executor_for(mapper, epmd_port, envvars=env)
        self.executor = self.executor_for([program], executor=AMQPExecutor, envvars=env)

    def start(self) -> None:
        """Start the server, and its port mapper first if it is not running."""
        if not self.epmd.running():
            self.launch(self.epmd)
        super().start()

    def logs(self) -> str:
        return "\n".join(path.read_text() for path in [self.log, *self.workdir.glob("log/*.log")])

    def close(self) -> None:
        """Stop its port mapper too."""
        self.epmd.stop()
        super().close()


class MariaDB(Server):
    """A MariaDB server; its user `tests` has a password hard to guess (as production settings
    demand) and may create databases, as may the generated workflow's user (WORKFLOW_ACCOUNTS)
    from this machine, with the workflow's password. It stops by a normal shutdown: it closes
    its clients' connections and stops."""

    name = "MariaDB"

    def __init__(self, workdir: Path) -> None:
        install, program = mariadb_programs()
        super().__init__(workdir)
        # --no-defaults first: none of the machine's option files. It drops Debian's character
        # set too, so the server's is given here.
        options = [
            "--no-defaults",
            f"--datadir={workdir / 'data'}",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci",
            "--innodb-buffer-pool-size=128M",
        ]
        if os.geteuid() == 0:
            options.append("--user=root")
        (workdir / "tmp").mkdir()
        subprocess.run(
            [install, *options, "--auth-root-authentication-method=normal", "--skip-test-db"],
            cwd=workdir,
            check=True,
            capture_output=True,
        )
        password = secrets.token_hex(16)
        user, workflow_password = WORKFLOW_ACCOUNTS["mysql"]
        (workdir / "init.sql").write_text(
            f"CREATE USER IF NOT EXISTS 'tests'@'%' IDENTIFIED BY '{password}';\n"
            "GRANT ALL PRIVILEGES ON *.* TO 'tests'@'%';\n"
            f"CREATE USER IF NOT EXISTS '{user}'@'{HOST}';\n"
            f"ALTER USER '{user}'@'{HOST}' IDENTIFIED BY '{workflow_password}';\n"
            f"GRANT ALL PRIVILEGES ON *.* TO '{user}'@'{HOST}' WITH GRANT OPTION;\n"
        )
        self.url = f"mysql://tests:{password}@{HOST}:{self.port}/mysql"
        command = [program, *options, f"--port={self.port}", f"--bind-address={HOST}"]
        command += [f"--socket={workdir / 'mysqld.sock'}", f"--pid-file={workdir / 'mysqld.pid'}"]
        command += [f"--tmpdir={workdir / 'tmp'}", f"--init-file={workdir / 'init.sql'}"]
        command += ["--skip-name-resolve", "--skip-log-bin", "--max-connections=300"]
        # Durability is not what the tests are about: commits return before they reach disk.
        command += ["--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0"]
        self.executor = self.executor_for(command)


# Each service by the variable that names it: the server to start for it, in a directory.
SERVICES: dict[str, Callable[[Path, Mapping[str, str]], Server]] = {
    "POSTGRES_URL": Postgres,
    "REDIS_URL": Redis,
    "RABBITMQ_URL": lambda workdir, env: RabbitMQ(workdir),
    "MYSQL_URL": lambda workdir, env: MariaDB(workdir),
}
# The variable naming the server of each database that has one.
SERVER_VARIABLES = {"postgresql": "POSTGRES_URL", "mysql": "MYSQL_URL"}


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
