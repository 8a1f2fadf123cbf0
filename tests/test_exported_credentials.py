"""A generated project's tests do not depend on the credentials a developer exports: its
settings tests pass with each server's default or CI password in DATABASE_URL, REDIS_URL and
RABBITMQ_URL, which production settings refuse."""

from __future__ import annotations

from pathlib import Path

from support.combinations import Combination
from tests.combinations import combinations_where
from tests.projects import assert_own_tests_pass

# What a developer may have exported: the URLs of local servers with their images' default or
# CI passwords. Every one of them too weak for production.
EXPORTED_DATABASE_URLS = {
    "postgresql": "postgresql://postgres:postgres@localhost:5432/app",
    "mysql": "mysql://root:mysql@127.0.0.1:3306/app",
}
EXPORTED_BROKER_URLS = {
    "REDIS_URL": "redis://:redis@localhost:6379/0",
    "RABBITMQ_URL": "amqp://guest:guest@localhost:5672//",
}


@combinations_where(lambda c: c.orm == "sqlalchemy" and c.is_async)
def test_settings_tests_pass_whatever_credentials_are_exported(
    project: Path, venv: Path, combination: Combination
) -> None:
    """Each database and broker once (async SQLAlchemy stands for the ORMs and modes: the
    settings are the same)."""
    env = dict(EXPORTED_BROKER_URLS)
    if combination.database in EXPORTED_DATABASE_URLS:
        env["DATABASE_URL"] = EXPORTED_DATABASE_URLS[combination.database]
    assert_own_tests_pass(project, env, "tests/test_settings.py")
