"""Engines and sessions, created lazily once per process (never shared across a fork)."""

import asyncio
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from shared.settings import get_settings


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the API read while a worker writes progress; busy_timeout waits out short write locks.
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _postgres_read_only(dbapi_conn: Any, _record: Any) -> None:
    # A SET rather than a startup option, which connection poolers such as PgBouncer refuse.
    cursor = dbapi_conn.cursor()
    cursor.execute("SET default_transaction_read_only = on")
    cursor.close()
    dbapi_conn.commit()  # a session setting outlives the transaction it was made in, if that one commits


P = ParamSpec("P")
T = TypeVar("T")
_engines: dict[str, Engine] = {}
_async_engines: dict[str, AsyncEngine] = {}


def get_engine(url: str | None = None) -> Engine:
    """The engine for `url` (default: the configured database), one per process."""
    url = url or get_settings().db_url
    if url not in _engines:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 10})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True)
        _engines[url] = engine
    return _engines[url]


def libpq_url(url: str) -> str:
    """A PostgreSQL database's SQLAlchemy URL as psycopg (libpq) takes it: without the `+driver`."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def async_url(url: str) -> str:
    """The same database through an asyncio driver: aiosqlite for SQLite, psycopg's async side for PostgreSQL."""
    parsed = make_url(url)
    driver = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+psycopg"}.get(parsed.get_backend_name())
    return parsed.set(drivername=driver).render_as_string(hide_password=False) if driver else url


def get_async_engine(url: str | None = None) -> AsyncEngine:
    """The asyncio engine for `url` (default: the configured database), one per process, for the API's read routes."""
    url = url or get_settings().db_url
    if url not in _async_engines:
        if url.startswith("sqlite"):
            # Pooled: opening an aiosqlite connection starts its thread and runs the pragmas, which cost a poll more
            # than its query. Each pooled connection keeps a (non-daemon) thread, so the API closes them on shutdown
            # (`dispose_async_engines`), as `reset_engines` does. No overflow: see below.
            engine = create_async_engine(async_url(url), pool_size=10, max_overflow=0, connect_args={"timeout": 10})
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            # Reads are not bounded by a thread pool, so the pool bounds them: more polls at once than it holds wait
            # for one of its connections. With overflow, each burst opened (and forked PostgreSQL backends for)
            # connections that were closed again as soon as it was over: under 32 clients about 400 in 6 s, and most
            # of a poll's p99 (72-80 ms, against 26-30 ms without; on SQLite 109-138 ms against 62-70 ms).
            # Each statement runs in a transaction of its own: READ COMMITTED (the default) already gives each
            # statement its own snapshot, so a poll loses nothing and saves the BEGIN and ROLLBACK round trips, and
            # holds no transaction open. Its connections are read-only, so a write through this engine fails rather
            # than committing. They are not pinged when taken from the pool (`run_read` retries on a dead one).
            engine = create_async_engine(async_url(url), pool_size=20, max_overflow=0, isolation_level="AUTOCOMMIT")
            event.listen(engine.sync_engine, "connect", _postgres_read_only)
        _async_engines[url] = engine
    return _async_engines[url]


async def run_read(read: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run the sync function `read` on a connection of the asyncio engine (`read(connection, *args, **kwargs)`).

    The engine does not ping a connection when it takes one from its pool: on this box that round trip cost a poll
    about a third of its throughput. A connection the database dropped (it restarted, say) fails on first use
    instead, which empties the pool; a read is safe to run again, so it runs once more on a fresh connection.
    """
    for attempt in (1, 2):
        try:
            async with get_async_engine().connect() as connection:
                return await connection.run_sync(read, *args, **kwargs)
        except DBAPIError as exc:
            if attempt == 2 or not exc.connection_invalidated:
                raise
    raise AssertionError("unreachable")  # the loop returns or raises


@cache
def get_sessionmaker(url: str | None = None) -> sessionmaker[Session]:
    """A session factory bound to `get_engine(url)`."""
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A short-lived session; the caller commits, an exception rolls back."""
    with get_sessionmaker(url)() as session:
        try:
            yield session
        except BaseException:
            session.rollback()
            raise


def reset_engines(*, close: bool = True) -> None:
    """Forget this process's engines (after a fork, or when tests switch databases)."""
    get_sessionmaker.cache_clear()
    for engine in _engines.values():
        # After a fork the pooled connections belong to the parent: drop them without closing.
        engine.dispose(close=close)
    for async_engine in _async_engines.values():
        _dispose_async(async_engine, close=close)
    _engines.clear()
    _async_engines.clear()


def _dispose_async(engine: AsyncEngine, *, close: bool) -> None:
    # Closing an asyncio connection needs an event loop: run one unless this thread is already inside one.
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        if close:
            asyncio.run(engine.dispose())
            return
    engine.sync_engine.dispose(close=False)


async def dispose_async_engines() -> None:
    """Close the asyncio engines' pooled connections (when the API shuts down)."""
    for engine in list(_async_engines.values()):
        await engine.dispose()


os.register_at_fork(after_in_child=lambda: reset_engines(close=False))
