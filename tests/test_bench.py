"""The benchmark harness (bench/) keeps working: in smoke mode it renders the sync stack,
serves it, its hand-written peer and itself with its metrics on, loads them with k6 at normal
load and at overload, and prints its table. Its timings are the benchmark's to report, not this
test's to judge."""

from __future__ import annotations

import subprocess
import sys

import pytest

from support.combinations import REPO_ROOT

pytestmark = pytest.mark.xdist_group("bench")


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m bench` with these arguments, which must succeed."""
    result = subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_the_benchmark_runs_in_smoke_mode() -> None:
    result = bench("--smoke")
    rows = [line.split(" | ") for line in result.stdout.splitlines() if line.startswith("| sync")]
    assert [(row[0], row[1]) for row in rows] == [
        ("| sync SQLAlchemy (hand-written)", "8"),
        ("| sync SQLAlchemy (hand-written)", "40"),
        ("| sync SQLAlchemy (generated)", "8"),
        ("| sync SQLAlchemy (generated)", "40"),
        ("| sync SQLAlchemy (generated, metrics on)", "8"),
        ("| sync SQLAlchemy (generated, metrics on)", "40"),
    ], result.stdout
    # Every request the generated app was sent got a 200, and its throughput was measured.
    for row in rows[2:]:
        assert float(row[2]) > 0 and row[6] == "0 (0)", result.stdout
    assert "x its peer" in rows[2][-1], result.stdout
    assert "x its peer" in rows[4][-1], result.stdout


def test_the_live_benchmark_runs_in_smoke_mode() -> None:
    """`--live` with a hundred clients: both apps hold them all, and the generated app delivers
    the item's and the jobs' changes to every one of its clients. (The figures are the
    benchmark's to report.)"""
    result = bench("--live", "100", "--smoke")
    rows = [line.split(" | ") for line in result.stdout.splitlines() if line.startswith("| live")]
    assert [row[0] for row in rows] == [
        "| live clients (generated)",
        "| live clients (hand-written, the common way)",
    ], result.stdout
    generated, hand_written = rows
    assert generated[1] == hand_written[1] == "100 of 100", result.stdout
    assert generated[-2].endswith("(0)") and generated[-1].endswith("(0) |"), result.stdout
