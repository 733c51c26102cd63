"""Jobs as `GET /jobs/{id}` last showed them, so that a poll of a job that has not changed costs no query.

PostgreSQL only. A trigger on `jobs` (migration 0010) notifies the `ftq_jobs` channel with the id of every job
updated or deleted, by any writer; the API's listener (`api.jobwatch`) drops that job's entry. So a poll shows a
change at most the notification's trip (milliseconds) after its commit, as a poll sent a moment earlier would have.
Nothing is served or kept while the listener is not connected, and the cache starts empty each time it connects.
Jobs in the queue are never kept: their place moves when other jobs start. Views are kept as the JSON sent, bytes
the garbage collector does not walk (kept as validated models, 2,048 specs had cost the polls 11-14% in collection).
"""

import threading
from dataclasses import dataclass, field


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
