"""The repository's own CI: the GitHub workflow stays valid and covers every combination;
`.ci/run` and the README's two commands work."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

# pytest's own evaluation of -m and -k expressions, to check what each CI job selects.
from _pytest.mark import KeywordMatcher, MarkMatcher
from _pytest.mark.expression import Expression

from support.combinations import COMBINATIONS, REPO_ROOT
from support.services import free_port

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
        assert set(job["services"]) == {"postgres", "redis", "mariadb"}
        install, tests = [step["run"] for step in job["steps"] if "run" in step]
        # RabbitMQ, which no PyPI package ships, from the runner's packages: the suite starts
        # its own (RABBITMQ_URL unset).
        assert "apt-get install --yes --no-install-recommends rabbitmq-server" in install
        assert "uv run pytest" in tests
        (step,) = [step for step in job["steps"] if step.get("run") == tests]
        assert set(step["env"]) == {"POSTGRES_URL", "REDIS_URL", "MYSQL_URL"}


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
    # Everything the suite needs, the README's command gets itself, but for the servers that
    # no PyPI package ships, which the script installs first.
    installed = re.findall(r"packages\+=\((\S+)\)", script)
    assert sorted(installed) == ["mariadb-server", "rabbitmq-server"], script
    assert 'apt-get install --yes --no-install-recommends "${packages[@]}"' in script
    assert not re.search(r"\bapt |pip |brew |npm ", script), script


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
        assert (status, body) == (200, b'{"status":"ok","unavailable":[]}')
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


def job_selections() -> dict[str, list[str]]:
    """The pytest arguments of every CI job: the local run's (`.ci/run` runs the README's
    command, which selects everything) and each GitHub job's, once per matrix value."""
    selections = {".ci/run": shlex.split(readme_command("test").rsplit("uv run pytest", 1)[1])}
    for name, job in yaml.safe_load(WORKFLOW.read_text())["jobs"].items():
        matrix = job.get("strategy", {}).get("matrix", {})
        values = [{}] if not matrix else [{k: v} for k, vs in matrix.items() for v in vs]
        for step in job["steps"]:
            if "uv run pytest" not in step.get("run", ""):
                continue
            for value in values:
                command = step["run"]
                for key, replacement in value.items():
                    command = command.replace(f"${{{{ matrix.{key} }}}}", replacement)
                label = " ".join([name, *value.values()])
                selections[label] = shlex.split(command.split("uv run pytest", 1)[1])
    for label, arguments in selections.items():
        assert set(arguments[::2]) <= {"-m", "-k"}, f"{label} selects tests not by -m/-k alone"
    return selections


def selects(arguments: list[str], item: pytest.Item) -> bool:
    """Whether pytest run with `arguments` (`-m` and `-k` only) runs `item`, by pytest's own
    matching of marker and keyword expressions."""
    options = dict(zip(arguments[::2], arguments[1::2], strict=True))
    if "-m" in options and not Expression.compile(options["-m"]).evaluate(
        MarkMatcher.from_markers(item.iter_markers())
    ):
        return False
    return "-k" not in options or Expression.compile(options["-k"]).evaluate(
        KeywordMatcher.from_item(item)
    )


def jobs_running_each_test(selections: dict[str, list[str]]) -> dict[str, list[str]]:
    """Every test of this repository (collected anew, whatever this run selected), with the
    jobs among `selections` that run it."""
    jobs: dict[str, list[str]] = {}

    class Recorder:
        @pytest.hookimpl(trylast=True)
        def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
            for item in items:
                jobs[item.nodeid] = [
                    name for name, args in selections.items() if selects(args, item)
                ]

    arguments = ["--collect-only", "-q", "-o", "addopts=", "-p", "no:cacheprovider"]
    exit_code = pytest.main([*arguments, str(REPO_ROOT / "tests")], plugins=[Recorder()])
    assert exit_code == pytest.ExitCode.OK
    return jobs


def test_every_test_is_run_by_ci_run_and_by_exactly_one_github_job() -> None:
    """A new test module cannot fall between the GitHub jobs, nor run in two of them."""
    selections = job_selections()
    assert len(selections) == 1 + 1 + len(COMBINATIONS), selections
    jobs = jobs_running_each_test(selections)
    assert len(jobs) > 300
    assert all(".ci/run" in names for names in jobs.values())
    wrong = {test: names for test, names in jobs.items() if len(names) != 2}
    assert not wrong, wrong
    per_combination = [names for names in jobs.values() if "combination" in " ".join(names)]
    assert len(per_combination) > len(COMBINATIONS)
