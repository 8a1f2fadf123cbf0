"""Reference: live clients written the common way, over the async SQLAlchemy reference's reads.

Each SSE stream polls its job's row every half second, on a session of its own; each worker
keeps its WebSockets in a list and sends an item it creates to them: to that worker's clients
only, as hand-written broadcasts usually do.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request, WebSocket, WebSocketDisconnect
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy_async_app import Item, ItemRead, app, get_session

POLL_SECONDS = 0.5
sockets: list[WebSocket] = []


class ItemCreate(BaseModel):
    name: str
    quantity: int = 0


@app.post("/items", status_code=201)
async def create_item(
    payload: ItemCreate, session: Annotated[AsyncSession, Depends(get_session)]
) -> ItemRead:
    item = Item(name=payload.name, quantity=payload.quantity, description=None)
    session.add(item)
    await session.commit()
    created = ItemRead.model_validate(item)
    message = {"event": "created", "item": created.model_dump()}
    for socket in list(sockets):
        try:
            await socket.send_json(message)
        except (WebSocketDisconnect, RuntimeError, OSError):
            sockets.remove(socket)
    return created


@app.websocket("/items/live")
async def items_live(websocket: WebSocket) -> None:
    await websocket.accept()
    sockets.append(websocket)
    try:
        await websocket.send_json({"subscribed": None})
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        pass
    finally:
        if websocket in sockets:
            sockets.remove(websocket)


@app.get("/jobs/{job_id}/events", response_class=EventSourceResponse)
async def job_events(job_id: uuid.UUID, request: Request) -> AsyncIterator[ServerSentEvent]:
    last = None
    while True:
        async with request.app.state.sessions() as session:
            status = await session.scalar(
                text("SELECT status FROM jobs WHERE id = :id"), {"id": job_id}
            )
        if status != last:
            last = status
            yield ServerSentEvent(event=status, data={"id": str(job_id), "status": status})
            if status in ("succeeded", "failed"):
                return
        await asyncio.sleep(POLL_SECONDS)
