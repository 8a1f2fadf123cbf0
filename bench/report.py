"""The report: a Markdown table of each app's figures at each load, with its throughput's ratio
to its peer's (and to the raw driver's), and one of the jobs per second."""

from __future__ import annotations

import statistics

from bench.apps import APPS, reference
from bench.jobs import JOB_CLIENTS, JOBS
from bench.load import Result


def ratio(result: Result, other: Result) -> float:
    """The median, over the rounds, of the ratio of the two apps' throughputs in each round
    (the two ran one after the other), or of their figures when there were no rounds."""
    pairs = list(zip(result.round_rates, other.round_rates, strict=True))
    if not pairs:
        return result.rate / other.rate
    return statistics.median(mine / theirs for mine, theirs in pairs)


def comparisons(result: Result, by_key: dict[tuple[str, int], Result], normal: int) -> list[str]:
    """What the result is compared with: at the normal load, its peer and the raw driver's
    reference; at the overload, the same app at the normal load."""
    if result.clients != normal:
        return [f"{ratio(result, by_key[(result.app, normal)]):.2f}x at {normal}"]
    app = next(a for a in APPS if a.name == result.app)
    versus = [f"{ratio(result, by_key[(app.peer, normal)]):.2f}x its peer"] if app.peer else []
    raw = reference(app)
    if result.app != raw and (raw, normal) in by_key:
        driver = raw.removesuffix(" (hand-written)")
        versus.append(f"{ratio(result, by_key[(raw, normal)]):.2f}x {driver}")
    return versus


def table(results: list[Result], normal: int) -> str:
    by_key = {(r.app, r.clients): r for r in results}
    lines = [
        "| app | clients | req/s | median | p99 | slowest | not 200 (503) | after | opened"
        " | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        after = f"{r.after_ms:.0f} ms"
        if r.idle_in_transaction:
            after += f", {r.idle_in_transaction} idle in transaction"
        lines.append(
            f"| {r.app} | {r.clients} | {r.rate:.0f} | {r.median_ms:.0f} ms | {r.p99_ms:.0f} ms"
            f" | {r.max_ms:.0f} ms | {r.not_200} ({r.busy}) | {after} | {r.connections}"
            f" | {', '.join(comparisons(r, by_key, normal))} |"
        )
    return "\n".join(lines)


def jobs_table(jobs: dict[str, float]) -> str:
    lines = [f"| jobs | per second ({JOBS} jobs, {JOB_CLIENTS} clients) |", "|---|---|"]
    lines += [f"| {name} | {rate:.0f} |" for name, rate in jobs.items()]
    return "\n".join(lines)
