"""The repository's own CI: the GitHub workflow stays valid and covers every combination;
`.ci/run` and the README's two commands work."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.combinations import COMBINATIONS, REPO_ROOT
from tests.services import free_port

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "ci.yml"
pytestmark = pytest.mark.xdist_group("ci")


def readme_command(name: str) -> str:
    """The shell command README.md marks with `<!-- command: NAME -->`."""
    match = re.search(
        rf"<!-- command: {name} -->\n```sh\n(.+?)\n```", (REPO_ROOT / "README.md").read_text()
    )
    assert match, f"README.md has no command marked {name!r}"
    return match.group(1)


def test_workflow_is_valid(actionlint: list[str]) -> None:
    """Validated against the GitHub workflow schema that check-jsonschema ships, and by
    actionlint."""
    check = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run(
        [str(check), "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    linted = subprocess.run([*actionlint, str(WORKFLOW)], capture_output=True, text=True)
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_workflow_runs_one_job_per_combination_with_real_services() -> None:
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    matrix = jobs["combination"]["strategy"]["matrix"]["combination"]
    assert sorted(matrix) == sorted(c.id for c in COMBINATIONS)
    for job in jobs.values():
        assert set(job["services"]) == {"postgres", "redis"}
        run_steps = [step for step in job["steps"] if "run" in step]
        assert run_steps and all("uv run pytest" in step["run"] for step in run_steps)
        for step in run_steps:
            assert {"POSTGRES_URL", "REDIS_URL"} <= set(step["env"])


def test_ci_runs_the_readme_test_command() -> None:
    script = (REPO_ROOT / ".ci" / "run").read_text()
    assert "<!-- command: test -->" in script
    extracted = subprocess.run(
        [
            "bash",
            "-c",
            "awk '/<!-- command: test -->/ { getline; getline; print; exit }' README.md",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert extracted == readme_command("test")
    assert extracted.endswith("uv run pytest")


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read()


def test_readme_generate_and_serve_command_works_on_a_fresh_clone(tmp_path: Path) -> None:
    clone = tmp_path / "copier-fastapi"
    subprocess.run(["git", "clone", "--quiet", str(REPO_ROOT), str(clone)], check=True)
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "2", "VIRTUAL_ENV": ""}
    with log.open("wb") as output:
        server = subprocess.Popen(
            ["bash", "-c", readme_command("generate-and-serve")],
            cwd=clone,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                status, body = get(f"http://127.0.0.1:{port}/health")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"The service did not start:\n{log.read_text()}")
                time.sleep(0.5)
        assert (status, body) == (200, b'{"status":"ok","detail":null}')
        assert get(f"http://127.0.0.1:{port}/health/ready")[0] == 200
        assert (tmp_path / "my-service" / ".copier-answers.yml").is_file()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
            pytest.fail(f"The service did not stop on SIGTERM:\n{log.read_text()}")
    deadline = time.monotonic() + 30
    while port_is_open(port):
        assert time.monotonic() < deadline, "The service still listens 30 s after SIGTERM"
        time.sleep(0.2)


def port_is_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_the_workflow_jobs_together_run_every_test_module() -> None:
    """The template job and the combination jobs between them cover every test module."""
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    template_run = jobs["template"]["steps"][-1]["run"]
    combination_run = jobs["combination"]["steps"][-1]["run"]
    per_combination = set(re.findall(r"tests/(test_\w+\.py)", combination_run))
    ignored = set(re.findall(r"--ignore=tests/(test_\w+\.py)", template_run))
    assert per_combination == ignored
    modules = {path.name for path in (REPO_ROOT / "tests").glob("test_*.py")}
    assert per_combination <= modules
