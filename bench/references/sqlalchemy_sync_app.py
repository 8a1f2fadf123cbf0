"""Reference: FastAPI over sync SQLAlchemy (psycopg 3 or PyMySQL) in `def` routes, a session
per request.

A blocking driver in a `def` route: FastAPI runs the route in its thread pool."""

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel, ConfigDict
from sqlalchemy import String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


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
DRIVERS = {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql"}


def with_driver(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{DRIVERS[scheme]}://{rest}"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    engine = create_engine(
        with_driver(os.environ["DATABASE_URL"]),
        pool_size=int(os.environ["DB_POOL_SIZE"]),
        max_overflow=int(os.environ["DB_MAX_OVERFLOW"]),
    )
    app.state.sessions = sessionmaker(engine, expire_on_commit=False)
    yield
    engine.dispose()


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


app = FastAPI(lifespan=lifespan)


@app.get("/items/{item_id}")
def read_item(item_id: int, session: Annotated[Session, Depends(get_session)]) -> ItemRead:
    item = session.get(Item, item_id)
    if item is None:
        raise HTTPException(404, detail=f"Item {item_id} not found")
    return ItemRead.model_validate(item)
