"""Jobs as the API last showed them, so that a poll of a job that has not changed costs no query (`GET /jobs/{id}`,
and the jobs of a `GET /jobs` page).

PostgreSQL only. A trigger on `jobs` (migration 0010) notifies the `ftq_jobs` channel with the id of every job
updated or deleted, by any writer; the API's listener (`api.jobwatch`) drops that job's entry. So a poll shows a
change at most the notification's trip (milliseconds) after its commit, as a poll sent a moment earlier would have.
Nothing is served or kept while the listener is not connected (or its probes do not come back), and the cache starts
empty each time it goes live.
Jobs in the queue are never kept: their place moves when other jobs start. Views are kept as the JSON sent, bytes
the garbage collector does not walk (kept as validated models, 2,048 specs had cost the polls 11-14% in collection).

A job that changed is read once for all the polls that ask while it is being read (`shown`): when clients poll a
few running jobs, each progress write would otherwise send every poll of that job in the next milliseconds to the
database.
"""

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

Shown = tuple[str, bytes, bool]  # a job's owner's id, the JSON of its view, and whether that view may be kept


@dataclass
class JobViewCache:
    """Job id -> (its owner's id, the JSON of its view); at most `max_entries`, the oldest dropped first."""

    max_entries: int
    entries: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    # A view read before its job was dropped may be older than the change dropped, so it is not kept. Each drop
    # counts one `generation` and notes it against its job; a read notes the generation it began at. The notes are
    # forgotten in bulk past `max_notes`, and `floor` then turns away every read begun before.
    generation: int = 0
    dropped_at: dict[str, int] = field(default_factory=dict)
    floor: int = 0
    max_notes: int = 10_000
    live: bool = False  # only while the listener is connected
    lock: threading.Lock = field(default_factory=threading.Lock)  # routes on the thread pool drop too
    reads: dict[str, tuple[int, "asyncio.Task[Shown]"]] = field(default_factory=dict)  # in flight: (read_at, task)

    async def shown(self, job_id: str, read: Callable[[str], Awaitable[Shown]]) -> tuple[str, bytes]:
        """The job's owner's id and view: kept, or read by `read`, once for all the polls that ask meanwhile
        (unless the job changed after that read began)."""
        entry = self.entries.get(job_id)
        if entry is not None:
            return entry
        pending = self.reads.get(job_id)
        if pending is None or self.dropped_at.get(job_id, -1) > pending[0]:
            # A task of its own, so that a poll that goes away does not take the read from the others.
            pending = (self.generation, asyncio.ensure_future(read(job_id)))
            self.reads[job_id] = pending
            pending[1].add_done_callback(partial(self._read_done, job_id, pending))
        owner_id, view, _keep = await asyncio.shield(pending[1])
        return owner_id, view

    def _read_done(self, job_id: str, pending: tuple[int, "asyncio.Task[Shown]"], task: "asyncio.Task[Shown]") -> None:
        if self.reads.get(job_id) is pending:
            del self.reads[job_id]
        if task.cancelled() or task.exception() is not None:  # each poll that waited raises it
            return
        owner_id, view, keep = task.result()
        if keep:
            self.put(job_id, owner_id, view, pending[0])

    def get(self, job_id: str, owner_id: str | None) -> bytes | None:
        """The view kept of the job, if `owner_id` may see it (None: anyone may); else None."""
        entry = self.entries.get(job_id)
        if entry is None or (owner_id is not None and entry[0] != owner_id):
            return None
        return entry[1]

    def put(self, job_id: str, owner_id: str, view: bytes, read_at: int) -> None:
        """Keep a view read when `generation` was `read_at`, unless its job changed since or no one listens."""
        with self.lock:
            if not self.live or read_at < self.floor or self.dropped_at.get(job_id, -1) > read_at:
                return
            if job_id not in self.entries and len(self.entries) >= self.max_entries:
                if self.max_entries <= 0:
                    return
                del self.entries[next(iter(self.entries))]  # dicts keep insertion order: the oldest entry
            self.entries[job_id] = (owner_id, view)

    def drop(self, job_id: str) -> None:
        """Forget a job that changed."""
        with self.lock:
            self.generation += 1
            self.entries.pop(job_id, None)
            if len(self.dropped_at) >= self.max_notes:
                self.dropped_at, self.floor = {}, self.generation
            self.dropped_at[job_id] = self.generation

    def listening(self, live: bool) -> None:
        """The listener has (re)connected, or lost its connection: either way, start empty."""
        with self.lock:
            self.generation += 1
            self.entries, self.dropped_at, self.floor = {}, {}, self.generation
            self.live = live
