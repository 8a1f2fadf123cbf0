"""Reference: FastAPI over a raw asyncmy pool, the fastest way to read a MySQL row from Python."""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import unquote, urlsplit

import asyncmy
from asyncmy.cursors import DictCursor
from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel

POOL_SIZE = int(os.environ["DB_POOL_SIZE"])
MAX_SIZE = POOL_SIZE + int(os.environ["DB_MAX_OVERFLOW"])


class ItemRead(BaseModel):
    id: int
    name: str
    description: str | None
    quantity: int


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    url = urlsplit(os.environ["DATABASE_URL"])
    pool = await asyncmy.create_pool(
        host=url.hostname,
        port=url.port or 3306,
        user=unquote(url.username or ""),
        password=unquote(url.password or ""),
        db=url.path.lstrip("/"),
        minsize=POOL_SIZE,
        maxsize=MAX_SIZE,
        autocommit=True,
    )
    app.state.pool = pool
    yield
    pool.close()
    await pool.wait_closed()


app = FastAPI(lifespan=lifespan)


@app.get("/items/{item_id}")
async def read_item(item_id: int, request: Request) -> ItemRead:
    pool = request.app.state.pool
    async with pool.acquire() as connection, connection.cursor(DictCursor) as cursor:
        await cursor.execute(
            "SELECT id, name, description, quantity FROM items WHERE id = %s", (item_id,)
        )
        row = await cursor.fetchone()
    if row is None:
        raise HTTPException(404, detail=f"Item {item_id} not found")
    return ItemRead(**row)
