"""Jobs as the API last showed them, so that a poll of a job that has not changed costs no query (`GET /jobs/{id}`,
and the jobs of a `GET /jobs` page).

PostgreSQL only. A trigger on `jobs` (migration 0010) notifies the `ftq_jobs` channel with the id of every job whose
shown columns changed, or that was deleted, by any writer; the API's listener (`api.jobwatch`) drops that job's entry.
So a poll shows a change at most the notification's trip (milliseconds) after its commit, as a poll sent a moment
earlier would have. The cache is live only while the listener's probes come back (each renews it for a while): when
they stop, nothing is served or kept, and it starts empty when they come back. Jobs in the queue are never kept:
their place moves when other jobs start. Views are kept as the JSON sent, bytes the garbage collector does not walk
(kept as validated models, 2,048 specs had cost the polls 11-14% in collection).

A job that changed is read once for all the polls that ask while it is being read (`shown`): when clients poll a
few running jobs, each progress write would otherwise send every poll of that job in the next milliseconds to the
database.
"""

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

from shared.models import JobStatus

Shown = tuple[str, str, bytes]  # a job's owner's id, its status, and the JSON of its view
Pending = tuple[int, "asyncio.Task[Shown]"]  # a read in flight: the generation it began at, and its task


@dataclass
class JobViewCache:
    """Job id -> what `Shown` says of it; at most `max_entries`, the oldest dropped first."""

    max_entries: int
    entries: dict[str, Shown] = field(default_factory=dict)
    # A view read before its job was dropped may be older than the change dropped, so it is not kept. Each drop
    # counts one `generation` and notes it against its job; a read notes the generation it began at. The notes are
    # forgotten in bulk past `max_notes`, and `floor` then turns away every read begun before.
    generation: int = 0
    dropped_at: dict[str, int] = field(default_factory=dict)
    floor: int = 0
    max_notes: int = 10_000
    live_until: float = 0.0  # time.monotonic() before which the listener has vouched for the notifications
    lock: threading.Lock = field(default_factory=threading.Lock)  # routes on the thread pool drop too
    reads: dict[str, Pending] = field(default_factory=dict)  # used from the event loop only
    watched: bool = False  # an app of this process runs the listener (tests run several apps in one process)

    @property
    def live(self) -> bool:
        """Whether views may be served and kept now."""
        return time.monotonic() < self.live_until

    def kept(self, job_id: str) -> Shown | None:
        """What is kept of the job, while the cache is live; else None."""
        return self.entries.get(job_id) if self.live else None

    async def shown(self, job_id: str, read: Callable[[str], Awaitable[Shown]]) -> Shown:
        """The job as kept, or as `read` reads it: once for all the polls that ask meanwhile, unless something
        since that read began may have made it old."""
        entry = self.kept(job_id)
        if entry is not None:
            return entry
        pending = self.reads.get(job_id)
        if pending is None or not self._current(job_id, pending[0]):
            # A task of its own, so that a poll that goes away does not take the read from the others.
            pending = (self.generation, asyncio.ensure_future(read(job_id)))
            self.reads[job_id] = pending
            pending[1].add_done_callback(partial(self._read_done, job_id, pending))
        return await asyncio.shield(pending[1])

    def _read_done(self, job_id: str, pending: Pending, task: "asyncio.Task[Shown]") -> None:
        """Forget a finished read, and keep what it read (each waiting poll raises its error, if any)."""
        if self.reads.get(job_id) is pending:
            del self.reads[job_id]
        if not task.cancelled() and task.exception() is None:
            self.put(job_id, *task.result(), read_at=pending[0])

    def put(self, job_id: str, owner_id: str, status: str, view: bytes, read_at: int) -> None:
        """Keep a view read when `generation` was `read_at`, unless it is queued, its job changed since, or the cache
        is not live."""
        with self.lock:
            if status == JobStatus.queued or not self._current(job_id, read_at) or self.max_entries <= 0:
                return
            if job_id not in self.entries and len(self.entries) >= self.max_entries:
                del self.entries[next(iter(self.entries))]  # dicts keep insertion order: the oldest entry
            self.entries[job_id] = (owner_id, status, view)

    def _current(self, job_id: str, read_at: int) -> bool:
        """Whether a read begun at generation `read_at` is as new as anything the cache has heard of the job."""
        return self.live and read_at >= self.floor and self.dropped_at.get(job_id, -1) <= read_at

    def drop(self, job_id: str) -> None:
        """Forget a job that changed."""
        with self.lock:
            self.generation += 1
            self.entries.pop(job_id, None)
            if len(self.dropped_at) >= self.max_notes:
                self.dropped_at, self.floor = {}, self.generation
            self.dropped_at[job_id] = self.generation

    def renew(self, seconds: float) -> None:
        """The listener's probe came back: every notification sent before it has arrived. Stay live `seconds` more;
        coming back to life, start empty (notifications may have been lost meanwhile)."""
        with self.lock:
            now = time.monotonic()
            if now >= self.live_until:
                self._forget_all()
            self.live_until = now + seconds

    def stop(self) -> None:
        """The listener lost its connection: serve and keep nothing."""
        with self.lock:
            self.live_until = 0.0
            self._forget_all()

    def _forget_all(self) -> None:
        self.generation += 1
        self.entries, self.dropped_at, self.floor = {}, {}, self.generation
