"""Live clients for the benchmark, run by the served project's interpreter (websockets, uvloop):

    python -P live_clients.py BASE_URL WEBSOCKETS JOBS_FILE

Opens WEBSOCKETS connections to /items/live and one SSE stream per job id in JOBS_FILE, then
prints a JSON line (connected, failed, seconds). Each client notes when each change reaches it.
Then it answers commands read from stdin, one JSON line each:
- `open`: how many clients are still connected;
- `lags SINCE KIND TIMEOUT [COUNT]`: for each client of KIND (`websocket` or `sse`; the first
  COUNT of them), the delay from
  SINCE (a time.time()) to the first change it got after it, waiting up to TIMEOUT seconds for
  all of them: the median, 99th percentile and slowest, and how many got none;
- `quit`.
"""

import asyncio
import json
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import uvloop
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

CONNECTING_AT_ONCE = 200


class Client:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.arrivals: list[float] = []
        self.open = False


async def websocket_client(url: str, client: Client, ready: asyncio.Semaphore) -> None:
    async with ready:
        websocket = await connect(url, open_timeout=60, ping_interval=None, max_queue=None)
        await websocket.recv()
        client.open = True
    try:
        async for _ in websocket:
            client.arrivals.append(time.time())
    except ConnectionClosed:
        pass
    finally:
        client.open = False


async def sse_client(base: str, job: str, client: Client, ready: asyncio.Semaphore) -> None:
    parts = urlsplit(base)
    async with ready:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        writer.write(
            f"GET /jobs/{job}/events HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        status = await reader.readline()
        if b" 200 " not in status:
            raise ConnectionError(status.decode())
        client.open = True
    try:
        while line := await reader.readline():
            if line.startswith((b"event:", b"data:")):
                client.arrivals.append(time.time())
    finally:
        client.open = False
        writer.close()


def quantiles(lags: list[float]) -> dict[str, float]:
    lags = sorted(lags)
    if not lags:
        return {"median": 0.0, "p99": 0.0, "max": 0.0}
    pick = lambda q: lags[min(len(lags) - 1, int(q * len(lags)))]  # noqa: E731
    return {"median": pick(0.5), "p99": pick(0.99), "max": lags[-1]}


async def main(base: str, websockets: int, jobs: list[str]) -> None:
    ws_url = base.replace("http://", "ws://") + "/items/live"
    ready = asyncio.Semaphore(CONNECTING_AT_ONCE)
    clients = [Client("websocket") for _ in range(websockets)] + [Client("sse") for _ in jobs]
    started = time.monotonic()
    tasks = [
        asyncio.create_task(websocket_client(ws_url, clients[i], ready)) for i in range(websockets)
    ] + [
        asyncio.create_task(sse_client(base, job, clients[websockets + i], ready))
        for i, job in enumerate(jobs)
    ]
    while any(not c.open and not t.done() for c, t in zip(clients, tasks, strict=True)):
        await asyncio.sleep(0.1)
    failed = sum(1 for t in tasks if t.done() and t.exception() is not None)
    connected = sum(1 for c in clients if c.open)
    print(
        json.dumps(
            {"connected": connected, "failed": failed, "seconds": time.monotonic() - started}
        ),
        flush=True,
    )
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not line or line[0] == "quit":
            break
        if line[0] == "open":
            print(json.dumps({"open": sum(1 for c in clients if c.open)}), flush=True)
        elif line[0] == "lags":
            since, kind, timeout = float(line[1]), line[2], float(line[3])
            chosen = [c for c in clients if c.kind == kind][: int(line[4]) if line[4:] else None]
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not all(
                any(t >= since for t in c.arrivals) for c in chosen
            ):
                await asyncio.sleep(0.05)
            lags = [
                min(t for t in c.arrivals if t >= since) - since
                for c in chosen
                if any(t >= since for t in c.arrivals)
            ]
            print(json.dumps({**quantiles(lags), "missed": len(chosen) - len(lags)}), flush=True)
    for task in tasks:
        task.cancel()


if __name__ == "__main__":
    base, websockets, jobs_file = sys.argv[1:]
    jobs = Path(jobs_file).read_text().split()
    uvloop.run(main(base, int(websockets), jobs))
