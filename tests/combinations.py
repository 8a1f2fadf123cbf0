"""The valid combinations of the core answers: picking them by their answers, parametrizing tests
over them, and rendering the template for one of them."""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import copier
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Combination:
    database: str
    db_mode: str
    orm: str
    task_queue: str
    # Asked only with Celery; the default otherwise.
    celery_broker: str = "redis"

    @property
    def id(self) -> str:
        broker = f"-{self.celery_broker}" if self.task_queue == "celery" else ""
        return f"{self.orm}-{self.db_mode}-{self.database}-{self.task_queue}{broker}"

    @property
    def data(self) -> dict[str, str]:
        data = {
            "database": self.database,
            "db_mode": self.db_mode,
            "orm": self.orm,
            "task_queue": self.task_queue,
        }
        if self.task_queue == "celery":
            data["celery_broker"] = self.celery_broker
        return data

    @property
    def is_async(self) -> bool:
        return self.db_mode == "async"

    @property
    def database_server(self) -> bool:
        """Whether the database is a server (PostgreSQL or MySQL), not an embedded SQLite."""
        return self.database != "sqlite"

    @property
    def broker_service(self) -> str | None:
        """The broker's service (in compose and CI), or None without Celery."""
        return self.celery_broker if self.task_queue == "celery" else None

    @property
    def broker_variable(self) -> str | None:
        """The setting that names the broker, or None without Celery."""
        return f"{self.broker_service.upper()}_URL" if self.broker_service else None


COMBINATIONS = [
    Combination(
        database=database, db_mode=db_mode, orm=orm, task_queue=task_queue, celery_broker=broker
    )
    for (orm, db_mode), database, (task_queue, broker) in itertools.product(
        [("sqlalchemy", "async"), ("sqlalchemy", "sync"), ("tortoise", "async")],
        ["sqlite", "postgresql", "mysql"],
        [("background", "redis"), ("celery", "redis"), ("celery", "rabbitmq")],
    )
]


def broker_aside(combination: Combination) -> bool:
    """Whether the combination stands for its database, mode, ORM and task queue in the tests
    that do not involve the broker: all but the RabbitMQ ones, which differ from the Redis
    ones only in it."""
    return combination.celery_broker != "rabbitmq"


def stands_for_its_broker(combination: Combination) -> bool:
    """Whether the combination is the one a test of its broker alone runs with: PostgreSQL and
    async SQLAlchemy (what the broker does is the same whichever ORM and mode run the job)."""
    representative = combination_with(
        database="postgresql", task_queue="celery", celery_broker=combination.celery_broker
    )
    return combination == representative


def combination_with(**answers: str) -> Combination:
    """The one combination with these answers (the others at their defaults: SQLite, async
    SQLAlchemy, BackgroundTasks)."""
    wanted = {"database": "sqlite", "db_mode": "async", "orm": "sqlalchemy"}
    wanted |= {"task_queue": "background", "celery_broker": "redis", **answers}
    combination = Combination(**wanted)
    if combination not in COMBINATIONS:
        raise ValueError(f"{combination.id} is not a valid combination")
    return combination


def combination_params(keep: Callable[[Combination], bool] = lambda c: True) -> list[Any]:
    """The combinations `keep` is true of, as parameters for the `combination` fixture: named
    by their answers, marked `combination` (CI runs them one job per combination), and grouped
    per combination so that one xdist worker renders and installs each once."""
    return [
        pytest.param(c, id=c.id, marks=[pytest.mark.combination, pytest.mark.xdist_group(c.id)])
        for c in COMBINATIONS
        if keep(c)
    ]


def combinations_where(keep: Callable[[Combination], bool]) -> pytest.MarkDecorator:
    """Parametrize a test over the combinations `keep` is true of."""
    return pytest.mark.parametrize("combination", combination_params(keep), indirect=True)


def for_combination(combination: Combination) -> pytest.MarkDecorator:
    """Parametrize a test over one combination."""
    return combinations_where(lambda c: c == combination)


combination_param = combinations_where(lambda c: True)


def isolated_copier_settings() -> None:
    """Keep the user's own copier settings (defaults, trust) out of every render."""
    if "COPIER_SETTINGS_PATH" not in os.environ:
        handle, path = tempfile.mkstemp(prefix="copier-settings-", suffix=".yml")
        os.write(handle, b"{}\n")
        os.close(handle)
        os.environ["COPIER_SETTINGS_PATH"] = path


def render(
    dst: Path, data: dict[str, Any], *, src: Path = REPO_ROOT, vcs_ref: str = "HEAD", **kwargs: Any
) -> Path:
    """Render a template (by default this repository's working tree, not its latest tag)."""
    isolated_copier_settings()
    copier.run_copy(
        str(src),
        dst,
        data=data,
        vcs_ref=vcs_ref,
        defaults=True,
        unsafe=False,
        quiet=True,
        **kwargs,
    )
    return dst
