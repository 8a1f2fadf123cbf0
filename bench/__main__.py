"""`python -m bench`: the benchmark's command line (see bench/__init__.py)."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import bench
from bench import live, report
from bench.apps import STACKS, prepare
from bench.databases import Server
from bench.jobs import measure_jobs
from bench.load import Load, Result, k6_version, measure_stack
from support.services import SERVER_VARIABLES, ensure_services


def arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=(bench.__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=5, help="per app, load and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--overload", type=int, default=300)
    parser.add_argument("--stacks", nargs="+", choices=list(STACKS), default=list(STACKS))
    parser.add_argument("--smoke", action="store_true", help="sync stack, 1 s, 8 and 40 clients")
    parser.add_argument(
        "--live", type=int, metavar="CLIENTS", help="measure live clients instead (bench/live.py)"
    )
    parser.add_argument("--hold", type=float, default=60, help="seconds live clients are held")
    args = parser.parse_args(argv)
    if args.smoke and args.live:
        args.seconds, args.hold = 1, 3
    elif args.smoke:
        args.seconds, args.rounds, args.clients, args.overload = 1, 1, 8, 40
        args.stacks = ["sync"]
    return args


def main(argv: list[str]) -> int:
    args = arguments(argv)
    if args.live:
        return main_live(args.live, args.hold, args.seconds)
    plan = Load(args.clients, args.overload, args.seconds, args.rounds)
    databases = sorted({STACKS[stack].database for stack in args.stacks})
    variables = {SERVER_VARIABLES[database] for database in databases}
    if not args.smoke:
        variables.add("REDIS_URL")
    results: list[Result] = []
    jobs: dict[str, float] = {}
    with ensure_services(variables=variables) as urls, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        servers = {d: Server(d, urls[SERVER_VARIABLES[d]]) for d in databases}
        versions = ", ".join(server.version() for server in servers.values())
        print(
            f"# {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}, {versions}, {k6_version(workdir)}",
            file=sys.stderr,
        )
        for stack in args.stacks:
            server = servers[STACKS[stack].database]
            project, env = prepare(STACKS[stack], workdir, server)
            results += measure_stack(stack, server, project, env, plan, workdir)
            if not args.smoke:
                jobs |= measure_jobs(stack, server, project, env, urls["REDIS_URL"], workdir)
    print(report.table(results, args.clients))
    if jobs:
        print(f"\n{report.jobs_table(jobs)}")
    return 0


def main_live(clients: int, hold: float, seconds: float) -> int:
    """The live clients' benchmark (bench/live.py)."""
    with ensure_services(variables={"POSTGRES_URL"}) as urls, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server = Server("postgresql", urls["POSTGRES_URL"])
        print(
            f"# {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}, {server.version()}, {k6_version(workdir)}",
            file=sys.stderr,
        )
        project, env = prepare(STACKS["async"], workdir, server)
        print(live.table(live.measure_live(server, project, env, clients, hold, seconds, workdir)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
