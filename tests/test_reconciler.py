"""The reconciler against the real Redis: lost validation messages are re-sent, missing GPU bells replaced,
and a worker answering a bell claims the job that has waited longest."""

from datetime import timedelta
from typing import Any

import redis
from sqlalchemy import select

from shared.attempts import Claim, claim_next_job
from shared.db import session_scope
from shared.jobs import create_job, get_job, pass_validation
from shared.models import User, utcnow
from shared.reconciler import reconcile_once
from shared.spec import JobSpec


def new_job(spec: dict[str, Any], *, validated: bool, age_s: float = 0) -> str:
    """A job committed as the API would (no message sent), optionally past validation."""
    with session_scope() as session:
        owner = session.scalars(select(User)).one()
        job = create_job(session=session, spec=JobSpec.model_validate(spec), owner=owner)
        job.created_at = utcnow() - timedelta(seconds=age_s)
        if validated:
            pass_validation(session=session, job_id=job.id, stats={}, planned_steps=1, warnings=[])
        session.commit()
        return job.id


def test_a_job_left_validating_without_a_message_is_sent_again(
    api_key: str, spec: dict[str, Any], redis_client: redis.Redis, queue_name: str
) -> None:
    stuck, fresh = new_job(spec, validated=False, age_s=3600), new_job(spec, validated=False)

    first, second = reconcile_once(), reconcile_once()

    assert first.revalidated == [stuck] and fresh not in first.revalidated
    assert second.revalidated == [], "re-sent once per redispatch interval, not on every pass"
    assert redis_client.llen(f"{queue_name}-validate") == 1


def test_queued_jobs_without_messages_get_one_bell_each(
    api_key: str, spec: dict[str, Any], redis_client: redis.Redis, queue_name: str
) -> None:
    jobs = [new_job(spec, validated=True) for _ in range(3)]
    redis_client.delete(queue_name)  # as a Redis flush would

    first, second = reconcile_once(), reconcile_once()

    assert sorted(first.bells) == sorted(jobs)
    assert second.bells == []
    assert redis_client.llen(queue_name) == 3


def test_a_bell_claims_the_job_that_waited_longest(api_key: str, spec: dict[str, Any]) -> None:
    newer, older = new_job(spec, validated=True, age_s=10), new_job(spec, validated=True, age_s=20)

    with session_scope() as session:
        first = claim_next_job(session=session, worker="w1")
        second = claim_next_job(session=session, worker="w2")
        third = claim_next_job(session=session, worker="w3")
        session.commit()
        assert get_job(session=session, job_id=older).attempt == 1

    assert (first, second, third) == (Claim(older, 1), Claim(newer, 1), None)
