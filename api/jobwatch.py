"""The API's listener for job changes on PostgreSQL: it keeps `api.viewcache` in step with the database.

It trusts its connection only while the connection proves it delivers: every `PROBE_EVERY_S` a second connection
notifies a probe on the channel and the listener must receive it. Notifications reach a listener in commit order, so
a probe back means every change committed before it has arrived. A link that died without closing, or a pooler that
does not keep a session's LISTEN (PgBouncer in transaction mode), shows as a lost probe: the cache goes off and the
listener connects again. The cache is live only from the first probe back, and for at most two probe periods after
the last one, so a listener stuck anywhere cannot leave it live.
"""

import asyncio
import logging
import uuid

import psycopg
from sqlalchemy import make_url

from api.viewcache import JobViewCache
from shared.db import libpq_url

log = logging.getLogger(__name__)

CHANNEL = "ftq_jobs"  # notified by the trigger of migration 0010, with a job's id
PROBE_PREFIX = "probe:"  # a listener's own probes (of this process or another); job ids never start with it
PROBE_EVERY_S = 10.0
RETRY_S = 1.0
MAX_RETRY_S = 30.0


class ProbeLost(Exception):
    """A probe sent on the channel did not come back: notifications are not reaching this listener."""


def watches_jobs(database_url: str) -> bool:
    """Whether the database can notify job changes (PostgreSQL; SQLite cannot)."""
    return make_url(database_url).get_backend_name() == "postgresql"


def start_job_watch(database_url: str, cache: JobViewCache) -> "asyncio.Task[None] | None":
    """Start the listener that keeps `cache` live, unless the database cannot notify, the cache keeps nothing, or a
    listener of this process runs already."""
    if not watches_jobs(database_url) or cache.max_entries <= 0 or cache.watched:
        return None
    cache.watched = True
    task = asyncio.create_task(watch_job_changes(database_url, cache))
    task.add_done_callback(lambda _task: setattr(cache, "watched", False))
    return task


async def watch_job_changes(database_url: str, cache: JobViewCache) -> None:
    """For as long as the API runs: LISTEN for changed jobs and drop each from the cache. A lost connection or
    probe turns the cache off (polls read the database) until a new connection proves it delivers."""
    delay = RETRY_S
    while True:
        try:
            async with (
                await _connect(database_url, "ftq-api-job-watch") as listener,
                await _connect(database_url, "ftq-api-job-probe") as prober,
            ):
                await listener.execute(f"LISTEN {CHANNEL}")
                await follow_job_changes(listener, prober, cache, f"{PROBE_PREFIX}{uuid.uuid4().hex}")
        except (psycopg.Error, OSError, ProbeLost) as exc:
            log.warning("job watch: %s; polls read the database until it reconnects", type(exc).__name__)
        except Exception:
            log.exception("job watch failed; polls read the database until it reconnects")
        finally:
            # Soon after a watch that was live; longer each time while the database stays away (a log line each).
            delay = RETRY_S if cache.live else min(2 * delay, MAX_RETRY_S)
            cache.stop()
        await asyncio.sleep(delay)


async def _connect(database_url: str, name: str) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(
        libpq_url(database_url),
        autocommit=True,
        application_name=name,
        # A peer that vanished without closing the socket fails the connection within a minute.
        keepalives=1,
        keepalives_idle=30,
        keepalives_interval=10,
        keepalives_count=3,
    )


async def follow_job_changes(
    listener: psycopg.AsyncConnection, prober: psycopg.AsyncConnection, cache: JobViewCache, probe: str
) -> None:
    """Drop each job notified; every `PROBE_EVERY_S` send `probe` from `prober` and renew the cache when it reaches
    `listener` (ProbeLost when it does not). Sent from the listening session, it would come back with the reply to
    its own statement, having proved nothing."""
    while True:
        try:
            await asyncio.wait_for(send_probe(prober, probe), PROBE_EVERY_S)
        except TimeoutError as exc:
            raise ProbeLost(f"a probe took over {PROBE_EVERY_S:g} s to send") from exc
        returned = False
        async for notification in listener.notifies(timeout=PROBE_EVERY_S):
            if notification.payload == probe:
                returned = True
                cache.renew(2 * PROBE_EVERY_S)  # lapses by itself if this loop stalls
            elif not notification.payload.startswith(PROBE_PREFIX):
                cache.drop(notification.payload)
        if not returned:
            raise ProbeLost(f"no probe back within {PROBE_EVERY_S:g} s")


async def send_probe(connection: psycopg.AsyncConnection, probe: str) -> None:
    """Notify the channel with this listener's probe."""
    await connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, probe))
