"""What a job's row says of it, whichever ORM stores it: where the job is in its life, and the
clock its times are read on."""

import enum
from datetime import UTC, datetime


class JobStatus(enum.StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED)
UNFINISHED = (JobStatus.QUEUED, JobStatus.RUNNING)


def utc_now() -> datetime:
    """The current time, in UTC."""
    return datetime.now(UTC)
