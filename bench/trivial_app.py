"""The ceilings of bench/api_load.py, served by uvicorn like the API.

`/ping-async` is the smallest FastAPI endpoint; `/ping` the same as a sync `def`, which Starlette runs on its
thread pool (the ceiling of the runs before 2026-12-07, at about a third of the speed). `/ping-db` adds what no read
from the database can skip: one round trip to PostgreSQL (`SELECT 1` on a pooled psycopg connection, no ORM, no
transaction), so it is about the most a route that reads one row could serve on the same box.
"""

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from fastapi import FastAPI, HTTPException

POOL_SIZE = 8
POSTGRES_URL = os.environ.get("DATABASE_URL", "").replace("postgresql+psycopg://", "postgresql://")
pool: asyncio.Queue[psycopg.AsyncConnection] = asyncio.Queue()


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    """Open the pool's connections when DATABASE_URL names a database."""
    if POSTGRES_URL.startswith("postgresql://"):
        for _ in range(POOL_SIZE):
            pool.put_nowait(await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True))
    yield
    while not pool.empty():
        await pool.get_nowait().close()


app = FastAPI(lifespan=lifespan)


@app.get("/ping")
def ping() -> dict[str, str]:
    """Answer at once, from a thread of the pool."""
    return {"status": "ok"}


@app.get("/ping-async")
async def ping_async() -> dict[str, str]:
    """Answer at once, on the event loop."""
    return {"status": "ok"}


@app.get("/ping-db")
async def ping_db() -> dict[str, int]:
    """Answer after one round trip to PostgreSQL (503 when DATABASE_URL names none: nothing to wait for)."""
    if not POSTGRES_URL.startswith("postgresql://"):
        raise HTTPException(503, "DATABASE_URL names no PostgreSQL database")
    connection = await pool.get()
    try:
        row = await (await connection.execute("SELECT 1")).fetchone()
    finally:
        pool.put_nowait(connection)
    return {"status": row[0] if row else 0}
