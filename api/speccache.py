"""Job specs as validated, by job id, so that a page of `GET /jobs` read again does not decode and validate them.

A job's spec never changes once it is stored (nothing updates the column), so an entry cannot go stale and needs no
expiry. A page read its 20 specs with the rest of each row and validated each: about a third of its CPU in process.
Now it reads the rows without their specs and asks the database only for those this process has not seen.

The bound is small on purpose: the pages that are polled again (the newest jobs, a dashboard's) fit many times over,
and each spec kept is 17 objects (6 KB) the garbage collector walks. Kept for every job polled as well, 2,048 of them
cost `GET /jobs/{id}` 11-14% of its rate under load when the polls went to more jobs than that, and raised its p99
from 36 to 54-57 ms; that route reads and validates its one spec as before. Used from the event loop only (the read
routes are `async def`, their queries run on the loop's thread).
"""

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection

from shared.jobs import job_specs
from shared.spec import JobSpec


class SpecCache:
    """Job id -> its validated spec, the `max_entries` most recently used."""

    def __init__(self, max_entries: int = 512) -> None:
        self.max_entries = max_entries
        self.entries: OrderedDict[str, JobSpec] = OrderedDict()

    def get(self, job_id: str) -> JobSpec | None:
        """The spec of this job if this process has validated it, else None."""
        spec = self.entries.get(job_id)
        if spec is not None:
            self.entries.move_to_end(job_id)
        return spec

    def put(self, job_id: str, stored: dict[str, Any]) -> JobSpec:
        """Validate a job's stored spec and remember it."""
        spec = JobSpec.model_validate(stored)
        self.entries[job_id] = spec
        if len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)
        return spec

    def specs_of(self, connection: Connection, job_ids: Iterable[str]) -> dict[str, JobSpec]:
        """The specs of these jobs: from memory, and the rest from the database in one query."""
        found: dict[str, JobSpec] = {}
        missing = []
        for job_id in job_ids:
            spec = self.get(job_id)
            if spec is None:
                missing.append(job_id)
            else:
                found[job_id] = spec
        for job_id, stored in job_specs(connection=connection, job_ids=missing).items():
            found[job_id] = self.put(job_id, stored)
        return found
