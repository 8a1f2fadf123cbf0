"""The valid combinations of the core answers, and rendering the template for one of them."""

from __future__ import annotations

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

    @property
    def id(self) -> str:
        return f"{self.orm}-{self.db_mode}-{self.database}-{self.task_queue}"

    @property
    def data(self) -> dict[str, str]:
        return {
            "database": self.database,
            "db_mode": self.db_mode,
            "orm": self.orm,
            "task_queue": self.task_queue,
        }

    @property
    def is_async(self) -> bool:
        return self.db_mode == "async"


COMBINATIONS = [
    Combination(database=database, db_mode=db_mode, orm=orm, task_queue=task_queue)
    for (orm, db_mode), database, task_queue in itertools.product(
        [("sqlalchemy", "async"), ("sqlalchemy", "sync"), ("tortoise", "async")],
        ["sqlite", "postgresql"],
        ["background", "celery"],
    )
]


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
