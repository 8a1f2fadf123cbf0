"""Parametrizing tests over the valid combinations of the core answers (support.combinations),
each test named by its combination's answers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from support.combinations import COMBINATIONS, Combination, combination_with


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
