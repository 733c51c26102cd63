"""The API's listener for job changes on PostgreSQL: it keeps `api.viewcache` in step with the database."""

import asyncio
import logging

import psycopg
from sqlalchemy import make_url

from api.viewcache import JobViewCache

log = logging.getLogger(__name__)

CHANNEL = "ftq_jobs"  # notified by the trigger of migration 0010
RETRY_S = 1.0


def libpq_url(database_url: str) -> str:
    """The SQLAlchemy URL of a PostgreSQL database as psycopg takes it (no `+driver`)."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def watches_jobs(database_url: str) -> bool:
    """Whether the database can notify job changes (PostgreSQL; SQLite cannot)."""
    return make_url(database_url).get_backend_name() == "postgresql"


async def watch_job_changes(database_url: str, cache: JobViewCache) -> None:
    """For as long as the API runs: LISTEN for changed jobs and drop each from the cache. A lost connection turns
    the cache off (polls read the database) until a new one listens."""
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(
                libpq_url(database_url),
                autocommit=True,
                application_name="ftq-api-job-watch",
                # A peer that vanished without closing the socket is noticed within a minute, not hours.
                keepalives=1,
                keepalives_idle=30,
                keepalives_interval=10,
                keepalives_count=3,
            ) as connection:
                await connection.execute(f"LISTEN {CHANNEL}")
                cache.listening(True)
                async for notification in connection.notifies():
                    cache.drop(notification.payload)
        except (psycopg.Error, OSError) as exc:
            log.warning("job watch: %s; polls read the database until it reconnects", type(exc).__name__)
        finally:
            cache.listening(False)
        await asyncio.sleep(RETRY_S)
