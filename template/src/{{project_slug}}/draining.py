"""Telling the workers that gunicorn has started to drain, so that they end their live clients'
streams then, not once they stop.

On SIGTERM gunicorn serves on for GUNICORN_DRAIN_SECONDS while load balancers stop sending it
new clients (gunicorn.conf.py), then gives each worker its graceful timeout. A stream that is
still open would keep its worker all that time; ended as the drain starts, its client connects
again, to an instance that is still serving, and resumes where it left off.

The master opens a pipe before it forks its workers; each worker watches the read end, and the
master closes the write end when the drain starts: every worker sees the end of the pipe at
once, with no signal to handle.
"""

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

# The environment variable naming the pipe's read end, for the workers.
VARIABLE = "{{ project_slug | upper }}_DRAIN_FD"


class DrainSignal:
    """The master's side of the pipe."""

    def __init__(self) -> None:
        self._write: int | None = None

    def open(self) -> None:
        """Open the pipe, before the workers are forked (they inherit both ends)."""
        read, self._write = os.pipe()
        os.environ[VARIABLE] = str(read)

    def close_in_worker(self) -> None:
        """In a worker just forked: close its copy of the write end, or the pipe would never
        end while the worker lives."""
        self.send()

    def send(self) -> None:
        """In the master, as the drain starts: end the pipe."""
        if self._write is not None:
            os.close(self._write)
            self._write = None


@asynccontextmanager
async def on_drain(callback: Callable[[], None]) -> AsyncIterator[None]:
    """While the block runs, call `callback` on the event loop once the master starts to drain
    (never when not served by gunicorn)."""
    if VARIABLE not in os.environ:
        yield
        return
    pipe = int(os.environ[VARIABLE])
    loop = asyncio.get_running_loop()

    def drained() -> None:
        loop.remove_reader(pipe)
        callback()

    loop.add_reader(pipe, drained)
    try:
        yield
    finally:
        loop.remove_reader(pipe)
