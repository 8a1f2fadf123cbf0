"""Jobs per second through a generated stack: with BackgroundTasks, and with a Celery worker of
CELERY_PROCESSES processes on Redis."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mirakuru import SimpleExecutor

from bench.apps import STACKS, START_SECONDS, generated_app, prepare, serve
from bench.databases import Server
from support.combinations import Combination
from support.http import request

JOBS = 200  # per stack and queue
JOB_CLIENTS = 16
CELERY_PROCESSES = 2


def post_job(base: str, n: int) -> str:
    response = request("POST", f"{base}/jobs", {"text": f"job {n} " * 20})
    if response.status != 202:
        raise SystemExit(f"POST /jobs answered {response.status}: {response.body}")
    job_id: str = response.body["id"]
    return job_id


def job_status(base: str, job_id: str) -> str:
    status: str = request("GET", f"{base}/jobs/{job_id}").body["status"]
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
    """The project's Celery worker, CELERY_PROCESSES processes, until the block ends (then
    stopped: its process group)."""
    command = [str(project / ".venv" / "bin" / "bench-app-worker"), "--loglevel=WARNING"]
    command.append(f"--concurrency={CELERY_PROCESSES}")
    with log.open("wb") as output:
        worker = SimpleExecutor(
            command,
            cwd=str(project),
            envvars=env,
            timeout=START_SECONDS,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        worker.start()
        try:
            yield
        finally:
            worker.stop()


def served_jobs_per_second(stack: str, project: Path, env: dict[str, str], log: Path) -> float:
    """The stack's generated app's jobs per second, once warmed up."""
    with serve(generated_app(stack), project, env, log) as base:
        jobs_per_second(base)  # warm-up
        return jobs_per_second(base)


def measure_jobs(
    stack: str,
    server: Server,
    project: Path,
    env: dict[str, str],
    redis_url: str,
    workdir: Path,
) -> dict[str, float]:
    """The stack's jobs per second with BackgroundTasks (its project, served with `env`), then
    with Celery (a project of its own, on its own Redis database)."""
    name = generated_app(stack).name.split(" (")[0]
    background = served_jobs_per_second(stack, project, env, workdir / "jobs.log")
    celery = Combination(**(STACKS[stack].data | {"task_queue": "celery"}))
    project, env = prepare(celery, workdir, server)
    env["REDIS_URL"] = f"{redis_url}/{list(STACKS).index(stack) + 1}"
    with celery_worker(project, env, workdir / f"celery-{stack}.log"):
        rate = served_jobs_per_second(stack, project, env, workdir / "jobs-celery.log")
    return {
        f"{name} (generated), BackgroundTasks": background,
        f"{name} (generated), Celery": rate,
    }
