"""Live clients of a served project, run by the project's own interpreter (which has httpx and
websockets): `python -P live_clients.py BASE_URL WEBSOCKETS EXPECTED JOB_ID...`.

Before the others connect, three WebSockets send what the service must refuse (a binary
message, one over 16 KiB, one that is not a subscription), and the line `refused` gives the
close codes they got.

Opens WEBSOCKETS connections to /items/live and one SSE stream per job, prints `ready` once
every client is connected, `received` once every WebSocket has received EXPECTED changes, and,
once every client has been ended by the server (or after a minute), a JSON line: for each
WebSocket its close code and when it closed, for each stream when it ended and the events it
got (times from time.time()).
"""

import asyncio
import json
import sys
import time
from typing import Any

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

TIMEOUT = 60


async def websocket_client(url: str, connected: asyncio.Event, got: list[int]) -> dict[str, Any]:
    async with connect(url) as websocket:
        await websocket.recv()  # {"subscribed": null}: every change from now on
        connected.set()
        try:
            while True:
                got.append(json.loads(await websocket.recv())["item_id"])
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
    return {"code": code, "at": time.time(), "items": got}


async def sse_client(
    client: httpx.AsyncClient, url: str, connected: asyncio.Event
) -> dict[str, Any]:
    lines = []
    async with client.stream("GET", url) as response:
        async for line in response.aiter_lines():
            lines.append(line)
            connected.set()
    return {"status": response.status_code, "at": time.time(), "lines": lines}


BAD_MESSAGES: list[str | bytes] = [b"binary", json.dumps({"subscribe": [1] * 9000}), "{"]


async def refused(url: str, message: str | bytes) -> int | None:
    """The close code the service answers `message` with."""
    async with connect(url) as websocket:
        await websocket.recv()
        await websocket.send(message)
        try:
            await websocket.recv()
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
    return None


async def main(base: str, websockets: int, expected: int, jobs: list[str]) -> None:
    ws_url = base.replace("http://", "ws://") + "/items/live"
    codes = [await refused(ws_url, message) for message in BAD_MESSAGES]
    print("refused", json.dumps(codes), flush=True)
    got: list[list[int]] = [[] for _ in range(websockets)]
    connected = [asyncio.Event() for _ in range(websockets + len(jobs))]
    limits = httpx.Limits(max_connections=len(jobs) + 1)
    async with (
        asyncio.timeout(TIMEOUT),
        httpx.AsyncClient(limits=limits, timeout=TIMEOUT) as client,
    ):
        tasks = [
            asyncio.create_task(websocket_client(ws_url, connected[i], got[i]))
            for i in range(websockets)
        ] + [
            asyncio.create_task(
                sse_client(client, f"{base}/jobs/{job}/events", connected[websockets + i])
            )
            for i, job in enumerate(jobs)
        ]
        for event in connected:
            await event.wait()
        print("ready", flush=True)
        while any(len(items) < expected for items in got):
            await asyncio.sleep(0.05)
        print("received", flush=True)
        results = await asyncio.gather(*tasks)
    print(json.dumps({"websockets": results[:websockets], "streams": results[websockets:]}))


if __name__ == "__main__":
    base, websockets, expected, *jobs = sys.argv[1:]
    asyncio.run(main(base, int(websockets), int(expected), jobs))
