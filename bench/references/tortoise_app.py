"""Reference: FastAPI over Tortoise ORM (asyncpg or asyncmy)."""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict
from tortoise import fields
from tortoise.contrib.fastapi import RegisterTortoise
from tortoise.models import Model


class Item(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=100)
    description = fields.CharField(max_length=1000, null=True)
    quantity = fields.IntField(default=0)

    class Meta:
        table = "items"


class ItemRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    description: str | None
    quantity: int


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    size, overflow = int(os.environ["DB_POOL_SIZE"]), int(os.environ["DB_MAX_OVERFLOW"])
    url = os.environ["DATABASE_URL"].replace("postgresql://", "postgres://", 1)
    async with RegisterTortoise(
        app,
        db_url=f"{url}?minsize={size}&maxsize={size + overflow}",
        modules={"bench": [__name__]},
    ):
        yield


app = FastAPI(lifespan=lifespan)


@app.get("/items/{item_id}")
async def read_item(item_id: int) -> ItemRead:
    item = await Item.get_or_none(id=item_id)
    if item is None:
        raise HTTPException(404, detail=f"Item {item_id} not found")
    return ItemRead.model_validate(item)
