"""The directory where a service's processes write their Prometheus metrics (see metrics.py).

prometheus_client decides when it is first imported whether it keeps metrics in memory or
writes them to files in PROMETHEUS_MULTIPROC_DIR, so a program whose processes share their
metrics sets the directory before anything imports it: gunicorn's master before it loads the
app into its workers (gunicorn.conf.py), and the Celery worker's launcher before it loads the
worker. This module imports nothing that imports prometheus_client.
"""

import os
import shutil
import tempfile

VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def create() -> str:
    """Make an empty directory and name it in the environment, for this process and those it
    starts; returns it.

    A directory of its own for every run, so that no process of an earlier run is counted; in
    shared memory where there is some, since every request writes to those files.
    """
    parent = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    directory = tempfile.mkdtemp(prefix="metrics-", dir=parent)
    os.environ[VARIABLE] = directory
    return directory


def remove() -> None:
    """Remove the directory `create` made, if any."""
    if directory := os.environ.pop(VARIABLE, None):
        shutil.rmtree(directory, ignore_errors=True)
