"""Reference: FastAPI over async SQLAlchemy (asyncpg or asyncmy), a session per request."""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel, ConfigDict
from sqlalchemy import String
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(String(1000))
    quantity: Mapped[int]


class ItemRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    description: str | None
    quantity: int


# The driver each database's plain URL gets.
DRIVERS = {"postgresql": "postgresql+asyncpg", "mysql": "mysql+asyncmy"}


def with_driver(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{DRIVERS[scheme]}://{rest}"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    engine = create_async_engine(
        with_driver(os.environ["DATABASE_URL"]),
        pool_size=int(os.environ["DB_POOL_SIZE"]),
        max_overflow=int(os.environ["DB_MAX_OVERFLOW"]),
    )
    app.state.sessions = async_sessionmaker(engine, expire_on_commit=False)
    yield
    await engine.dispose()


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessions() as session:
        yield session


app = FastAPI(lifespan=lifespan)


@app.get("/items/{item_id}")
async def read_item(
    item_id: int, session: Annotated[AsyncSession, Depends(get_session)]
) -> ItemRead:
    item = await session.get(Item, item_id)
    if item is None:
        raise HTTPException(404, detail=f"Item {item_id} not found")
    return ItemRead.model_validate(item)
