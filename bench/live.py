"""Live clients: the generated app (async SQLAlchemy on PostgreSQL) beside a hand-written peer
written the common way (references/live_app.py), each under gunicorn with 2 workers.

For each app: `GET /items/{id}` under k6 (64 clients), then CLIENTS live clients connect (half
WebSockets to /items/live, half SSE streams each following a queued job of its own) and are held
for HOLD seconds, during which the read is measured again; then one item is created (through
the app) and a hundred jobs change (as a worker running them would change them), and each
client's delay from the change to its arrival is taken. The table gives what the clients cost
(memory of the service per 1,000 clients; the database connections that listen for changes, and
the transactions per second, while they are held and nothing else runs), what they do to
the read (its throughput and p99 while they are held, as ratios to without), how many were
dropped while held, and the delivery lags (median, p99, how many never got the change).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.apps import HERE, App, copy_database, serve
from bench.databases import Server
from bench.load import load
from support.http import request

APPS = [
    App("live clients (generated)", "async"),
    App("live clients (hand-written, the common way)", "async", "live_app"),
]
JOBS_CHANGED = 100


@dataclass(frozen=True)
class LiveResult:
    app: str
    clients: int
    connected: int
    connect_seconds: float
    mb_per_1000: float
    listening: int  # connections to the database that LISTEN, while the clients are held
    idle_tps: float  # the database's transactions per second while held, with no other load
    read_rate_ratio: float
    read_p99_ratio: float
    dropped: int
    item_lag: dict[str, float]
    job_lag: dict[str, float]


def service_rss(port: int) -> int:
    """The resident memory of the processes serving on the port (gunicorn and its workers)."""
    pids = {c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port}
    return sum(psutil.Process(pid).memory_info().rss for pid in pids if pid)


def queued_jobs(server: Server, url: str, count: int) -> list[str]:
    """`count` jobs stored queued: their ids."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    for start in range(0, count, 1000):
        values = ",".join(f"('{i}', 'queued', 'word', 0, now())" for i in ids[start : start + 1000])
        insert = f"INSERT INTO jobs (id, status, text, attempts, updated_at) VALUES {values}"
        server.value(url, insert)
    return ids


def change_jobs(server: Server, url: str, ids: list[str], generated: bool) -> None:
    """Mark the jobs running, as a worker does: the generated app's worker records the change
    in the same transaction."""
    listed = ",".join(f"'{i}'" for i in ids)
    statement = f"UPDATE jobs SET status = 'running' WHERE id IN ({listed});"
    if generated:
        state = {"status": "running", "result": None, "error": None}
        data = ",".join(
            f"('jobs', '{i}', 'running', '{json.dumps({'id': i, **state})}', now())" for i in ids
        )
        # One transaction (psql runs the statements of one command together).
        statement += f" INSERT INTO changes (topic, key, event, data, at) VALUES {data};"
    server.value(url, statement)


def listening_connections(server: Server, url: str) -> int:
    """The connections to the database that listen for notifications."""
    name = url.rsplit("/", 1)[1]
    statement = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%' AND datname = "
    return int(server.value(url, f"{statement}'{name}'"))


def transactions(server: Server, url: str) -> int:
    """The transactions the database has run."""
    name = url.rsplit("/", 1)[1]
    statement = "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = "
    return int(server.value(url, f"{statement}'{name}'"))


def live_clients(
    project: Path, base: str, websockets: int, jobs_file: Path
) -> subprocess.Popen[str]:
    """The live clients' process (live_clients.py), in the project's environment."""
    command = [
        str(project / ".venv" / "bin" / "python"),
        "-P",
        str(HERE / "live_clients.py"),
        base,
        str(websockets),
        str(jobs_file),
    ]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def ask(clients: subprocess.Popen[str], command: str) -> dict[str, float]:
    """Send the live clients' process a command: its answer (none to `quit`)."""
    assert clients.stdin and clients.stdout
    clients.stdin.write(command + "\n")
    clients.stdin.flush()
    if command == "quit":
        return {}
    answer: dict[str, float] = json.loads(clients.stdout.readline())
    return answer


def measure_live(
    server: Server,
    project: Path,
    env: dict[str, str],
    clients: int,
    hold: float,
    seconds: float,
    workdir: Path,
) -> list[LiveResult]:
    """Each app of APPS with `clients` live clients held `hold` seconds; `seconds` per load."""
    results = []
    for app in APPS:
        database = copy_database(server, env["DATABASE_URL"], app)
        app_env = {**env, "DATABASE_URL": database, "MAX_LIVE_CONNECTIONS": str(clients)}
        jobs = queued_jobs(server, database, clients // 2)
        jobs_file = workdir / f"{app.key}.jobs"
        jobs_file.write_text("\n".join(jobs))
        with serve(app, project, app_env, workdir / f"{app.key}.log") as base:
            port = int(base.rsplit(":", 1)[1])
            load(base, 64, min(2, seconds), workdir)  # warm-up
            before = load(base, 64, seconds, workdir)
            # A few clients first: what the first ones cost (code loaded on first use) is not
            # what each one costs.
            warm_file = workdir / "warm.jobs"
            warm_file.write_text("\n".join(jobs[-10:]))
            with live_clients(project, base, 10, warm_file) as warm:
                assert warm.stdout
                warm.stdout.readline()
                ask(warm, "quit")
            time.sleep(1)
            rss_before = service_rss(port)
            with live_clients(project, base, clients - clients // 2, jobs_file) as live:
                assert live.stdout
                ready = json.loads(live.stdout.readline())
                held_from = time.monotonic()
                time.sleep(2)
                rss_held = service_rss(port)
                listening = listening_connections(server, database)
                before_idle = transactions(server, database)
                time.sleep(seconds)
                idle_tps = (transactions(server, database) - before_idle) / seconds
                during = load(base, 64, seconds, workdir)
                time.sleep(max(0.0, hold - (time.monotonic() - held_from)))
                still_open = ask(live, "open")["open"]
                since = time.time()
                request("POST", f"{base}/items", {"name": "live"})
                item_lag = ask(live, f"lags {since} websocket 10")
                since = time.time()
                change_jobs(server, database, jobs[:JOBS_CHANGED], app.module is None)
                job_lag = ask(live, f"lags {since} sse 10 {JOBS_CHANGED}")
                ask(live, "quit")
        connected = int(ready["connected"])
        result = LiveResult(
            app.name,
            clients,
            connected,
            ready["seconds"],
            (rss_held - rss_before) / 2**20 / max(connected, 1) * 1000,
            listening,
            idle_tps,
            during["rate"] / before["rate"],
            during["p99_ms"] / before["p99_ms"],
            connected - int(still_open),
            item_lag,
            job_lag,
        )
        print(result, file=sys.stderr)
        results.append(result)
    return results


def table(results: list[LiveResult]) -> str:
    lines = [
        "| app | clients connected | s to connect | MB per 1,000 | DB connections listening"
        " | DB transactions/s (held, no load)"
        " | read req/s (held / not) | read p99 (held / not) | dropped while held"
        " | item lag p50 / p99 (missed) | job lag p50 / p99 (missed) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.app} | {r.connected} of {r.clients} | {r.connect_seconds:.0f} | "
            f"{r.mb_per_1000:.1f} | {r.listening} | {r.idle_tps:.0f} | "
            f"{r.read_rate_ratio:.2f} | "
            f"{r.read_p99_ratio:.2f} | {r.dropped} | "
            f"{r.item_lag['median'] * 1000:.0f} / {r.item_lag['p99'] * 1000:.0f} ms "
            f"({r.item_lag['missed']:.0f}) | "
            f"{r.job_lag['median'] * 1000:.0f} / {r.job_lag['p99'] * 1000:.0f} ms "
            f"({r.job_lag['missed']:.0f}) |"
        )
    return "\n".join(lines)
