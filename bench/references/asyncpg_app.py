"""Reference: FastAPI over a raw asyncpg pool, the fastest way to read a row from Python."""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
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
    async with asyncpg.create_pool(
        os.environ["DATABASE_URL"], min_size=POOL_SIZE, max_size=MAX_SIZE
    ) as pool:
        app.state.pool = pool
        yield


app = FastAPI(lifespan=lifespan)


@app.get("/items/{item_id}")
async def read_item(item_id: int, request: Request) -> ItemRead:
    row = await request.app.state.pool.fetchrow(
        "SELECT id, name, description, quantity FROM items WHERE id = $1", item_id
    )
    if row is None:
        raise HTTPException(404, detail=f"Item {item_id} not found")
    return ItemRead(**row)
