"""Suite-wide set-up: isolated copier settings and the PostgreSQL and Redis servers."""

from __future__ import annotations

import contextlib
import os

import pytest

from tests import services
from tests.combinations import isolated_copier_settings

_services: contextlib.ExitStack | None = None


def pytest_configure(config: pytest.Config) -> None:
    """In the controlling process, before xdist starts its workers: find or start servers.

    The URLs go into the environment, which the workers inherit.
    """
    global _services
    isolated_copier_settings()
    if hasattr(config, "workerinput") or config.option.collectonly:
        return
    _services = contextlib.ExitStack()
    try:
        urls = _services.enter_context(services.ensure_services())
    except (services.ServiceError, OSError) as exc:
        _services.close()
        raise pytest.UsageError(f"The test servers are not available: {exc}") from exc
    os.environ.update(urls)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _services is not None:
        _services.close()
