"""Engines and sessions, created lazily once per process (never shared across a fork)."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from shared.settings import get_settings


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the API read while a worker writes progress; busy_timeout waits out short write locks.
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


_engines: dict[str, Engine] = {}


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
    _engines.clear()


os.register_at_fork(after_in_child=lambda: reset_engines(close=False))
