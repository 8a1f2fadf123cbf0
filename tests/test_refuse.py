"""Every invalid answer is refused before any file is written, with a message a person reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.combinations import render

REFUSED = [
    ({"db_mode": "sync", "orm": "tortoise"}, "Tortoise ORM is async-only"),
    ({"pool_size": 0}, "pool_size must be at least 1 (got 0)"),
    ({"pool_size": -3}, "pool_size must be at least 1 (got -3)"),
    ({"max_overflow": -1}, "max_overflow must be 0 or more (got -1)"),
    ({"pool_timeout": 0}, "pool_timeout must be more than 0 seconds (got 0.0)"),
    ({"pool_timeout": -2.5}, "pool_timeout must be more than 0 seconds (got -2.5)"),
    ({"pool_recycle": 0}, "pool_recycle must be a number of seconds of at least 1, or -1"),
    ({"pool_recycle": -5}, "pool_recycle must be a number of seconds of at least 1, or -1"),
    ({"workers": -1}, "workers must be 0 (derive from the CPU count) or a positive number"),
    ({"project_slug": "My-Service"}, 'project_slug "My-Service" is not a Python package name'),
    ({"project_slug": "2fast"}, 'project_slug "2fast" is not a Python package name'),
    ({"project_slug": "my service"}, 'project_slug "my service" is not a Python package name'),
    ({"project_slug": "class"}, 'project_slug "class" is a Python keyword'),
    ({"project_slug": "fastapi"}, 'project_slug "fastapi" would shadow a package'),
    ({"project_slug": "tests"}, 'project_slug "tests" would shadow a package'),
    ({"project_name": "   "}, "project_name must not be empty"),
    ({"project_name": 'The "Best" API'}, "project_name must not contain double quotes"),
    ({"project_name": "C:\\API"}, "project_name must not contain double quotes or backslashes"),
    ({"description": 'Says "hi"'}, "description must not contain double quotes or backslashes"),
    ({"database": "oracle"}, "Invalid choice for 'database'"),
    ({"db_mode": "threads"}, "Invalid choice for 'db_mode'"),
    ({"orm": "django"}, "Invalid choice for 'orm'"),
    ({"task_queue": "rq"}, "Invalid choice for 'task_queue'"),
    ({"task_queue": "celery", "celery_broker": "kafka"}, "Invalid choice for 'celery_broker'"),
    ({"pool_size": "five"}, "'five'"),
    (
        {"database": "postgresql", "db_max_connections": 0},
        "db_max_connections must be at least 1 (got 0)",
    ),
    (
        {"database": "postgresql", "workers": 4, "db_max_connections": 59},
        "4 workers x (5 pool_size + 10 max_overflow) = 60 connections, more than "
        "db_max_connections (59): lower workers, pool_size or max_overflow, or raise "
        "db_max_connections",
    ),
    (
        {"database": "postgresql", "task_queue": "celery", "workers": 4, "db_max_connections": 63},
        "4 workers x (5 pool_size + 10 max_overflow) + 4 Celery worker processes = 64 "
        "connections, more than db_max_connections (63)",
    ),
    (
        {"database": "postgresql", "workers": 10, "pool_size": 20, "max_overflow": 0},
        "10 workers x (20 pool_size + 0 max_overflow) = 200 connections, more than "
        "db_max_connections (100)",
    ),
    (
        {"database": "mysql", "workers": 4, "db_max_connections": 59},
        "4 workers x (5 pool_size + 10 max_overflow) = 60 connections, more than "
        "db_max_connections (59)",
    ),
]


@pytest.mark.xdist_group("refuse")
@pytest.mark.parametrize(("data", "message"), REFUSED, ids=[str(d) for d, _ in REFUSED])
def test_invalid_answer_is_refused_and_nothing_is_written(
    tmp_path: Path, data: dict[str, object], message: str
) -> None:
    dst = tmp_path / "project"
    with pytest.raises(ValueError) as refused:
        render(dst, data)
    assert message in str(refused.value)
    assert not dst.exists() or not any(dst.iterdir())


@pytest.mark.xdist_group("refuse")
def test_an_existing_directory_keeps_its_files_when_an_answer_is_refused(tmp_path: Path) -> None:
    dst = tmp_path / "project"
    dst.mkdir()
    (dst / "notes.txt").write_text("mine")
    with pytest.raises(ValueError):
        render(dst, {"pool_size": 0})
    assert [p.name for p in dst.iterdir()] == ["notes.txt"]
    assert (dst / "notes.txt").read_text() == "mine"


@pytest.mark.xdist_group("refuse")
@pytest.mark.parametrize(
    "data",
    [
        {"pool_size": 1, "max_overflow": 0, "pool_recycle": -1, "workers": 1},
        {"pool_timeout": 0.1, "project_slug": "a1_b2"},
        {"db_mode": "sync", "orm": "sqlalchemy"},
        # the connection budget: the edge that fits exactly, with and without Celery
        {"database": "postgresql", "workers": 4, "db_max_connections": 60},
        {"database": "postgresql", "task_queue": "celery", "workers": 4, "db_max_connections": 64},
        {"database": "mysql", "workers": 4, "db_max_connections": 60},
        # with workers derived from the CPU count there is nothing to check at copy time
        {"database": "postgresql", "workers": 0, "pool_size": 500, "db_max_connections": 10},
        # SQLite has no connection budget
        {"database": "sqlite", "workers": 64, "pool_size": 100},
        {"database": "sqlite", "workers": 20, "db_max_connections": 100},
    ],
    ids=str,
)
def test_edge_answers_are_accepted(tmp_path: Path, data: dict[str, object]) -> None:
    project = render(tmp_path / "project", data)
    assert (project / ".copier-answers.yml").is_file()


@pytest.mark.xdist_group("refuse")
def test_db_max_connections_is_asked_only_for_a_database_server(tmp_path: Path) -> None:
    sqlite = render(tmp_path / "sqlite", {"database": "sqlite"})
    assert "db_max_connections" not in (sqlite / ".copier-answers.yml").read_text()
    for database in ("postgresql", "mysql"):
        project = render(tmp_path / database, {"database": database})
        assert "db_max_connections: 100" in (project / ".copier-answers.yml").read_text()
