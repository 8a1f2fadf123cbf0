"""The valid combinations of the core answers, picking one by its answers, and rendering the
template (this repository's working tree) for one of them."""

from __future__ import annotations

import atexit
import itertools
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import copier

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


def combination_with(**answers: str) -> Combination:
    """The one combination with these answers (the others at their defaults: SQLite, async
    SQLAlchemy, BackgroundTasks)."""
    wanted = {"database": "sqlite", "db_mode": "async", "orm": "sqlalchemy"}
    wanted |= {"task_queue": "background", "celery_broker": "redis", **answers}
    combination = Combination(**wanted)
    if combination not in COMBINATIONS:
        raise ValueError(f"{combination.id} is not a valid combination")
    return combination


def isolated_copier_settings() -> None:
    """Keep the user's own copier settings (defaults, trust) out of every render: an empty
    settings file, removed when the process that made it exits (processes it starts, such as
    xdist's workers, inherit it)."""
    if "COPIER_SETTINGS_PATH" not in os.environ:
        handle, path = tempfile.mkstemp(prefix="copier-settings-", suffix=".yml")
        os.write(handle, b"{}\n")
        os.close(handle)
        atexit.register(os.remove, path)
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
