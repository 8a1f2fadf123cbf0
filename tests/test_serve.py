"""Every combination served for real, in production mode: its migrations build the schema, then
gunicorn boots the project's own gunicorn.conf.py on a free loopback port against its real
database (and, for Celery, a real worker on real Redis);
the worker count is the one asked for, the API works under more concurrent requests than it
has connections, and SIGTERM shuts it down cleanly within graceful_timeout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.combinations import Combination, combination_param
from tests.projects import (
    SLUG,
    answers_for,
    empty_database,
    migrate_command,
    project_env,
    redis_url_for,
    run,
)
from tests.services import free_port

GRACEFUL_TIMEOUT = 10
START_TIMEOUT = 60


def request(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if body is not None else {}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def environment(combination: Combination, tmp_path: Path) -> dict[str, str]:
    env = {
        **os.environ,
        **project_env(),
        "ENVIRONMENT": "production",
        "GUNICORN_GRACEFUL_TIMEOUT": str(GRACEFUL_TIMEOUT),
        # A small pool, so that the burst below needs more connections than there are.
        "DB_POOL_SIZE": "1",
        "DB_MAX_OVERFLOW": "1",
    }
    env.pop("WEB_CONCURRENCY", None)
    # A home of its own: gunicorn must not create its control socket there (or anywhere).
    env["HOME"] = str(tmp_path / "home")
    (tmp_path / "home").mkdir()
    env["DATABASE_URL"] = empty_database(combination, "serve", tmp_path)
    if combination.task_queue == "celery":
        env["REDIS_URL"] = redis_url_for(combination)
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
            if request("GET", f"{base}/health")[0] == 200:
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
def test_gunicorn_accepts_the_config(project: Path, venv: Path) -> None:
    run(
        [str(venv / "bin" / "gunicorn"), "--check-config", "-c", "gunicorn.conf.py"],
        project,
        project_env(),
    )


@combination_param
def test_serves_under_gunicorn(
    project: Path, venv: Path, combination: Combination, tmp_path: Path
) -> None:
    env = environment(combination, tmp_path)
    bin_dir = venv / "bin"
    # In production the app leaves the schema to the migrations.
    run(migrate_command(combination, venv), project, env)
    with ExitStack() as stack:
        if combination.task_queue == "celery":
            worker = stack.enter_context(
                process(
                    [
                        str(bin_dir / "celery"),
                        f"--app={SLUG}.worker",
                        "worker",
                        "--loglevel=INFO",
                    ],
                    project,
                    env,
                    tmp_path / "celery.log",
                )
            )
        for override in (None, "2"):
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
                stop_cleanly(server, log)
            with pytest.raises(OSError):
                request("GET", f"{base}/health")
            assert "Control socket" not in log.read_text()
    assert not (tmp_path / "home" / ".gunicorn").exists()


def exercise_the_api(base: str) -> None:
    status, item = request("POST", f"{base}/items", {"name": "served", "quantity": 2})
    assert status == 201, item
    assert request("GET", f"{base}/items/{item['id']}") == (200, item)

    status, job = request("POST", f"{base}/jobs", {"text": "served by gunicorn"})
    assert status == 202, job
    deadline = time.monotonic() + 60
    while job["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
        status, job = request("GET", f"{base}/jobs/{job['id']}")
        assert status == 200, job
    assert job["status"] == "succeeded", job
    assert job["result"] == {"words": 3, "lines": 1, "characters": 18}

    # Many more concurrent requests than the workers have connections: they queue, none fails.
    def create(n: int) -> int:
        return request("POST", f"{base}/items", {"name": f"burst-{n}"})[0]

    with ThreadPoolExecutor(max_workers=24) as pool:
        statuses = list(pool.map(create, range(96)))
    assert statuses == [201] * 96
