"""`GET /jobs/{id}` answers a poll of an unchanged job from memory on PostgreSQL (`api.viewcache`), and shows a
change as soon as the database notifies it, whoever made it (`api.jobwatch`)."""

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import JSON, Column, DateTime, Integer, inspect, update

from api.deps import job_view_cache
from api.jobwatch import CHANNEL
from api.main import create_app
from api.schemas import JobList
from api.viewcache import JobViewCache, Shown
from shared.auth import create_api_key
from shared.db import libpq_url, session_scope
from shared.errors import JobNotFound
from shared.jobs import SHOWN_COLUMNS
from shared.models import Job, JobStatus
from shared.settings import get_settings
from tests.conftest import client_for, read_statements
from tests.services import wait_until

on_postgres = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)


def views() -> JobViewCache:
    """The API process's cache (the test client runs the app in this process)."""
    settings = get_settings()
    return job_view_cache(settings.db_url, settings.job_view_cache_size)


def run_sql(statement: str, *params: Any) -> None:
    """Change the database from a connection of its own, as a worker or an operator would."""
    with psycopg.connect(libpq_url(get_settings().db_url), autocommit=True) as connection:
        connection.execute(statement, params)  # type: ignore[arg-type]


@pytest.fixture
def watched(client: TestClient) -> TestClient:
    """The client, once its API listens for job changes."""
    wait_until(lambda: views().live, timeout_s=10, what="the job watch to listen")
    return client


@pytest.fixture
def unnotified(client: TestClient) -> TestClient:
    """The client, its cache live but hearing of no change (as while a notification is still on its way: SQLite)."""
    views().renew(60)
    return client


@on_postgres
def test_a_poll_of_an_unchanged_job_reads_nothing_and_a_change_made_elsewhere_shows(
    watched: TestClient, spec: dict[str, Any]
) -> None:
    job = watched.post("/jobs", json=spec).json()
    first = watched.get(f"/jobs/{job['id']}").json()

    with read_statements("FROM jobs") as reads:
        again = watched.get(f"/jobs/{job['id']}").json()
    assert reads == [], "the unchanged job is answered from memory"
    assert again == first

    run_sql("UPDATE jobs SET progress = %s WHERE id = %s", '{"step": 7, "total_steps": 9}', job["id"])
    wait_until(
        lambda: watched.get(f"/jobs/{job['id']}").json()["progress"]["step"] == 7,
        timeout_s=10,
        what="the change to show",
    )
    with read_statements("FROM jobs") as reads:
        assert watched.get(f"/jobs/{job['id']}").json()["progress"]["step"] == 7
    assert reads == [], "the changed job is kept again once read"


@on_postgres
def test_a_page_of_jobs_read_again_reads_only_their_ids_and_shows_a_change_made_elsewhere(
    watched: TestClient, spec: dict[str, Any]
) -> None:
    created = [watched.post("/jobs", json={**spec, "metadata": {"n": str(n)}}).json()["id"] for n in range(3)]
    first = watched.get("/jobs").json()

    with read_statements("FROM jobs") as reads, read_statements("JOIN users") as views_read:
        page = watched.get("/jobs")
    again = page.json()
    assert len(reads) == 1 and views_read == [], "one query for the page's ids, none for what they show"
    assert page.content == JobList.model_validate_json(page.content).model_dump_json().encode(), "as JobList sends it"
    assert again == first
    assert [job["id"] for job in again["data"]] == created[::-1]
    assert again["data"] == [watched.get(f"/jobs/{job_id}").json() for job_id in created[::-1]]

    run_sql("UPDATE jobs SET progress = %s WHERE id = %s", '{"step": 5, "total_steps": 9}', created[1])
    wait_until(
        lambda: watched.get("/jobs").json()["data"][1]["progress"]["step"] == 5,
        timeout_s=10,
        what="the change to show in the list",
    )


@on_postgres
def test_when_the_watch_loses_its_connection_polls_read_the_database_until_it_listens_again(
    watched: TestClient, spec: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("api.jobwatch.RETRY_S", 3.0)  # time to look while it is away
    job = watched.post("/jobs", json=spec).json()
    watched.get(f"/jobs/{job['id']}")

    run_sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = 'ftq-api-job-watch' AND datname = current_database()"
    )
    wait_until(lambda: not views().live, timeout_s=10, what="the job watch to notice")
    # Made while no one listens: its notification reaches no one, so the kept view must have gone with the watch.
    run_sql("UPDATE jobs SET progress = %s WHERE id = %s", '{"step": 3, "total_steps": 9}', job["id"])
    assert watched.get(f"/jobs/{job['id']}").json()["progress"]["step"] == 3

    wait_until(lambda: views().live, timeout_s=10, what="the job watch to listen again")
    watched.get(f"/jobs/{job['id']}")
    run_sql("UPDATE jobs SET progress = %s WHERE id = %s", '{"step": 4, "total_steps": 9}', job["id"])
    wait_until(
        lambda: watched.get(f"/jobs/{job['id']}").json()["progress"]["step"] == 4,
        timeout_s=10,
        what="a change after the reconnect to show",
    )


@on_postgres
def test_a_watch_whose_probes_do_not_come_back_never_serves_from_memory(
    env: dict[str, str],
    api_key: str,
    spec: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As behind a pooler that does not keep a session's LISTEN: notifications go elsewhere."""

    async def probe_elsewhere(connection: psycopg.AsyncConnection, probe: str) -> None:
        await connection.execute("SELECT pg_notify('somewhere_else', %s)", (probe,))

    monkeypatch.setattr("api.jobwatch.send_probe", probe_elsewhere)
    monkeypatch.setattr("api.jobwatch.PROBE_EVERY_S", 0.2)
    monkeypatch.setattr("api.jobwatch.RETRY_S", 0.1)
    with TestClient(create_app(), headers={"Authorization": f"Bearer {api_key}"}) as client:
        job = client.post("/jobs", json=spec).json()
        wait_until(
            lambda: sum("ProbeLost" in record.getMessage() for record in caplog.records) >= 2,
            timeout_s=10,
            what="two probes lost",
        )
        with read_statements("JOIN users") as reads:
            client.get(f"/jobs/{job['id']}")
            client.get(f"/jobs/{job['id']}")

        assert not views().live
        assert len(reads) == 2, "each poll read the database"


@on_postgres
def test_a_queued_job_is_never_kept_since_its_place_moves_when_others_start(
    watched: TestClient, spec: dict[str, Any]
) -> None:
    ahead, behind = (watched.post("/jobs", json=spec).json()["id"] for _ in range(2))
    run_sql("UPDATE jobs SET status = 'queued' WHERE id IN (%s, %s)", ahead, behind)
    assert watched.get(f"/jobs/{behind}").json()["queue_position"] == 2

    run_sql("UPDATE jobs SET status = 'running' WHERE id = %s", ahead)  # notifies `ahead` only

    assert watched.get(f"/jobs/{behind}").json()["queue_position"] == 1


@on_postgres
def test_a_kept_job_is_shown_to_no_one_else_but_an_admin(watched: TestClient, spec: dict[str, Any]) -> None:
    job = watched.post("/jobs", json=spec).json()
    shown = watched.get(f"/jobs/{job['id']}").json()

    with client_for("stranger") as stranger:
        assert stranger.get(f"/jobs/{job['id']}").status_code == 404
    with client_for("root", admin=True) as admin:
        assert admin.get(f"/jobs/{job['id']}").json() == shown


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_cancel_shows_in_the_callers_next_poll_before_any_notification(
    unnotified: TestClient, spec: dict[str, Any]
) -> None:
    job = unnotified.post("/jobs", json=spec).json()
    assert unnotified.get(f"/jobs/{job['id']}").json()["status"] == "validating"
    assert views().kept(job["id"]) is not None

    unnotified.post(f"/jobs/{job['id']}/cancel")

    assert unnotified.get(f"/jobs/{job['id']}").json()["status"] == "cancelled"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_on_sqlite_nothing_is_kept_and_every_poll_reads_the_database(client: TestClient, spec: dict[str, Any]) -> None:
    job = client.post("/jobs", json=spec).json()
    client.get(f"/jobs/{job['id']}")

    client.get("/jobs")
    with read_statements("JOIN users") as reads:
        client.get(f"/jobs/{job['id']}")
        client.get("/jobs")

    assert len(reads) == 2, "SQLite cannot notify changes, so nothing may be served from memory"
    assert not views().live and views().entries == {}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_page_shows_a_job_kept_in_another_status_than_its_query_read_as_read_again(
    unnotified: TestClient, spec: dict[str, Any]
) -> None:
    job = unnotified.post("/jobs", json=spec).json()
    assert unnotified.get("/jobs").json()["data"][0]["status"] == "validating"

    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job["id"]).values(status=JobStatus.failed))
        session.commit()

    failed = unnotified.get("/jobs", params={"status": "failed"}).json()["data"]
    assert [shown["status"] for shown in failed] == ["failed"]


@on_postgres
def test_exactly_the_columns_a_job_is_shown_with_notify_its_change(client: TestClient, spec: dict[str, Any]) -> None:
    job_id = client.post("/jobs", json=spec).json()["id"]
    with session_scope() as session:
        _key, _raw = create_api_key(session=session, name="another-owner")
        session.commit()
        other_owner = _key.user_id
    # What `GET /jobs/{id}` shows: the shown columns under their names in the table, and the spec.
    shown = {inspect(Job).attrs[name].columns[0].name for name in SHOWN_COLUMNS} | {"spec"}
    values: dict[str, Any] = {"owner_id": other_owner, "status": "running"}

    def value_for(column: Column[Any], n: int) -> Any:
        if column.name in values:
            return values[column.name]
        if isinstance(column.type, JSON):
            return json.dumps({"changed": n})
        if isinstance(column.type, Integer):
            return 1000 + n
        if isinstance(column.type, DateTime):
            return datetime(2031, 1, 1, tzinfo=UTC) + timedelta(seconds=n)
        return f"changed-{n}"

    with psycopg.connect(libpq_url(get_settings().db_url), autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        notified = {}
        for n, column in enumerate(Job.__table__.c):
            if column.name == "id":
                continue
            run_sql(f"UPDATE jobs SET {column.name} = %s WHERE id = %s", value_for(column, n), job_id)
            run_sql("SELECT pg_notify(%s, 'marker')", CHANNEL)  # after the update's, if it sent one
            payloads = []
            for notification in listener.notifies(timeout=10):
                if notification.payload == "marker":
                    break
                payloads.append(notification.payload)
            notified[column.name] = payloads == [job_id]

    assert {name for name, sent in notified.items() if sent} == shown - {"id"}
    assert not notified["heartbeat_at"]


def test_a_view_read_before_its_job_changed_is_not_kept_but_one_of_another_job_is() -> None:
    cache = JobViewCache(max_entries=10)
    cache.renew(60)
    read_at = cache.generation

    cache.drop("ftjob-a")  # its change may be newer than what the read saw: the notification came after it began
    cache.put("ftjob-a", "user-1", "running", b"a", read_at)
    cache.put("ftjob-b", "user-1", "running", b"b", read_at)

    assert cache.kept("ftjob-a") is None
    assert cache.kept("ftjob-b") == ("user-1", "running", b"b")
    cache.put("ftjob-a", "user-1", "running", b"a", cache.generation)
    assert cache.kept("ftjob-a") == ("user-1", "running", b"a")


def test_once_the_drops_noted_overflow_no_read_begun_before_is_kept() -> None:
    cache = JobViewCache(max_entries=10, max_notes=2)
    cache.renew(60)
    read_at = cache.generation

    for job_id in ("ftjob-x", "ftjob-y", "ftjob-z"):
        cache.drop(job_id)
    cache.put("ftjob-a", "u", "running", b"a", read_at)  # which jobs changed during this read is no longer known

    assert cache.kept("ftjob-a") is None
    assert len(cache.dropped_at) <= 2
    cache.put("ftjob-a", "u", "running", b"a", cache.generation)
    assert cache.kept("ftjob-a") is not None


def test_nothing_is_kept_or_served_unless_the_listener_vouches_and_the_oldest_goes_first() -> None:
    cache = JobViewCache(max_entries=2)
    cache.put("ftjob-a", "u", "running", b"a", cache.generation)
    assert cache.kept("ftjob-a") is None, "no probe back yet"

    cache.renew(60)
    for job_id in ("ftjob-a", "ftjob-b", "ftjob-c", "ftjob-q"):
        cache.put(job_id, "u", "queued" if job_id == "ftjob-q" else "running", job_id.encode(), cache.generation)
    assert list(cache.entries) == ["ftjob-b", "ftjob-c"], "the oldest went first; a queued job is never kept"

    cache.live_until = time.monotonic() - 1  # the listener stopped renewing, stuck somewhere
    assert cache.kept("ftjob-b") is None
    cache.renew(60)
    assert cache.entries == {}, "back to life, it starts empty: notifications may have been lost meanwhile"

    cache.put("ftjob-b", "u", "running", b"b", cache.generation)
    cache.stop()
    assert cache.entries == {} and not cache.live


class SlowRead:
    """A read of a job that waits until released, counting how often it was made."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls = 0
        self.released = asyncio.Event()
        self.error = error

    async def __call__(self, job_id: str) -> Shown:
        self.calls += 1
        number = self.calls
        await self.released.wait()
        if self.error is not None:
            raise self.error
        return "u", "running", f"{job_id}:{number}".encode()


def test_polls_that_ask_while_a_job_is_read_share_the_read_even_if_the_first_goes_away() -> None:
    async def scenario() -> tuple[int, list[Shown], JobViewCache]:
        cache, read = JobViewCache(max_entries=10), SlowRead()
        cache.renew(60)
        polls = [asyncio.ensure_future(cache.shown("ftjob-a", read)) for _ in range(5)]
        await asyncio.sleep(0)
        polls[0].cancel()  # its client hung up
        read.released.set()
        shown = await asyncio.gather(*polls[1:])
        return read.calls, shown, cache

    calls, shown, cache = asyncio.run(scenario())

    assert calls == 1
    assert shown == [("u", "running", b"ftjob-a:1")] * 4
    assert cache.kept("ftjob-a") == ("u", "running", b"ftjob-a:1"), "kept for the next polls"


def test_a_read_that_fails_fails_each_poll_that_shared_it_and_keeps_nothing() -> None:
    async def scenario() -> tuple[list[BaseException | Shown], JobViewCache]:
        cache, read = JobViewCache(max_entries=10), SlowRead(JobNotFound("no job 'ftjob-a'", param="job_id"))
        cache.renew(60)
        polls = [asyncio.ensure_future(cache.shown("ftjob-a", read)) for _ in range(3)]
        await asyncio.sleep(0)
        read.released.set()
        return await asyncio.gather(*polls, return_exceptions=True), cache

    outcomes, cache = asyncio.run(scenario())

    assert [type(outcome) for outcome in outcomes] == [JobNotFound] * 3
    assert cache.entries == {} and cache.reads == {}


@pytest.mark.parametrize("reset", ["a change of the job", "the notes overflowing", "the listener lost", "no listener"])
def test_a_poll_does_not_share_a_read_begun_before_anything_that_may_have_made_it_old(reset: str) -> None:
    async def scenario() -> tuple[int, Shown, Shown]:
        cache, read = JobViewCache(max_entries=10, max_notes=1), SlowRead()
        if reset != "no listener":
            cache.renew(60)
        before = asyncio.ensure_future(cache.shown("ftjob-a", read))
        await asyncio.sleep(0)
        if reset == "a change of the job":
            cache.drop("ftjob-a")
        elif reset == "the notes overflowing":
            cache.drop("ftjob-x")
            cache.drop("ftjob-y")
        elif reset == "the listener lost":
            cache.stop()
        after = asyncio.ensure_future(cache.shown("ftjob-a", read))
        await asyncio.sleep(0)
        read.released.set()
        shown_before, shown_after = await before, await after
        return read.calls, shown_before, shown_after

    calls, before, after = asyncio.run(scenario())

    assert calls == 2
    assert (before, after) == (("u", "running", b"ftjob-a:1"), ("u", "running", b"ftjob-a:2"))
