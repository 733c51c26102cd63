"""A free GPU takes the next job by fair share between users, then priority, then age; `queue_position`
follows the same order."""

from datetime import UTC, datetime, timedelta
from typing import Any

from shared.attempts import Claim, claim_next_job
from shared.db import session_scope
from shared.jobs import create_job, pass_validation
from shared.models import User
from shared.scheduling import QueuedJob, fair_order
from shared.spec import JobSpec
from shared.users import get_or_create_user
from tests.conftest import client_for

T0 = datetime(2026, 11, 29, tzinfo=UTC)


def queued(job_id: str, owner: str, minute: int, priority: int = 0) -> QueuedJob:
    """A queued job of `owner` submitted `minute` minutes after T0."""
    return QueuedJob(id=job_id, owner_id=owner, priority=priority, created_at=T0 + timedelta(minutes=minute))


def test_a_user_with_a_running_job_waits_behind_a_user_with_none() -> None:
    jobs = [queued("alice-2", "alice", 1), queued("alice-3", "alice", 2), queued("bob-1", "bob", 3)]

    order, held = fair_order(jobs, running={"alice": 1}, caps={})

    assert order == ["bob-1", "alice-2", "alice-3"]
    assert held == []


def test_when_the_gpu_frees_the_user_who_last_got_it_waits_behind_the_others() -> None:
    jobs = [queued("alice-2", "alice", 1), queued("bob-1", "bob", 3), queued("carol-1", "carol", 4)]
    started = {"alice": T0 + timedelta(minutes=30), "carol": T0 + timedelta(minutes=10)}

    order, _held = fair_order(jobs, running={}, caps={}, last_started=started)

    assert order == ["bob-1", "carol-1", "alice-2"]


def test_equal_shares_alternate_between_users_oldest_first() -> None:
    jobs = [queued(f"alice-{n}", "alice", n) for n in range(3)] + [queued(f"bob-{n}", "bob", 10 + n) for n in range(2)]

    order, _held = fair_order(jobs, running={}, caps={})

    assert order == ["alice-0", "bob-0", "alice-1", "bob-1", "alice-2"]


def test_priority_goes_before_age_within_equal_share() -> None:
    jobs = [queued("old", "alice", 0), queued("urgent", "alice", 5, priority=10), queued("bob", "bob", 1)]

    order, _held = fair_order(jobs, running={}, caps={})

    assert order[0] == "urgent"
    assert order == ["urgent", "bob", "old"]


def test_fair_share_goes_before_priority() -> None:
    jobs = [queued("alice-urgent", "alice", 0, priority=100), queued("bob-low", "bob", 5, priority=-5)]

    order, _held = fair_order(jobs, running={"alice": 1}, caps={})

    assert order == ["bob-low", "alice-urgent"]


def test_a_user_at_their_running_cap_is_held_until_a_job_ends() -> None:
    jobs = [queued("alice-1", "alice", 0), queued("alice-2", "alice", 1), queued("bob-1", "bob", 2)]

    order, held = fair_order(jobs, running={"alice": 1}, caps={"alice": 1})

    assert order == ["bob-1"]
    assert held == ["alice-1", "alice-2"]


def _queued_job(session: Any, owner: User, spec: dict[str, Any]) -> str:
    job = create_job(session=session, spec=JobSpec.model_validate(spec), owner=owner)
    assert pass_validation(session=session, job_id=job.id, stats={}, planned_steps=1, warnings=[])
    return job.id


def test_the_worker_claims_the_fair_share_choice_from_the_database(env: dict[str, str], spec: dict[str, Any]) -> None:
    with session_scope() as session:
        alice = get_or_create_user(session=session, name="alice")
        bob = get_or_create_user(session=session, name="bob")
        alice_first, alice_second = _queued_job(session, alice, spec), _queued_job(session, alice, spec)
        bob_first = _queued_job(session, bob, spec)
        session.commit()

        claimed = [claim_next_job(session=session, worker=f"gpu{n}@test") for n in range(3)]
        session.commit()

    assert [c.job_id for c in claimed if c] == [alice_first, bob_first, alice_second]


def test_queue_position_shows_the_scheduling_order(env: dict[str, str], spec: dict[str, Any]) -> None:
    with session_scope() as session:
        alice = get_or_create_user(session=session, name="alice")
        bob = get_or_create_user(session=session, name="bob")
        running = _queued_job(session, alice, spec)
        waiting_alice = _queued_job(session, alice, spec)
        waiting_bob = _queued_job(session, bob, spec)
        session.commit()
        assert claim_next_job(session=session, worker="gpu0@test") == Claim(running, 1)
        session.commit()
    with client_for("root", admin=True) as admin:
        places = {job["id"]: job["queue_position"] for job in admin.get("/jobs").json()["data"]}

    assert places == {running: None, waiting_bob: 1, waiting_alice: 2}
