"""A page of jobs read again takes its specs from memory (`api.speccache`): a spec never changes once stored."""

from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.speccache import SpecCache
from shared.spec import JobSpec
from tests.conftest import client_for, read_statements


def test_a_page_read_again_takes_its_specs_from_memory_and_shows_the_same(
    client: TestClient, spec: dict[str, Any]
) -> None:
    created = [client.post("/jobs", json={**spec, "metadata": {"n": str(n)}}).json() for n in range(3)]

    with read_statements("jobs.spec") as first_reads:
        first = client.get("/jobs").json()
    with read_statements("jobs.spec") as second_reads:
        second = client.get("/jobs").json()

    assert len(first_reads) == 1, "one query for the page's specs"
    assert second_reads == [], "the same page again reads no spec"
    assert second == first
    assert first["data"] == [client.get(f"/jobs/{job['id']}").json() for job in reversed(created)]
    assert [job["spec"] for job in first["data"]] == [job["spec"] for job in reversed(created)]


def test_specs_remembered_for_one_owner_show_no_job_to_another(client: TestClient, spec: dict[str, Any]) -> None:
    job = client.post("/jobs", json=spec).json()
    assert client.get("/jobs").json()["data"] == [job]

    with client_for("stranger") as stranger:
        assert stranger.get("/jobs").json()["data"] == []
        assert stranger.get(f"/jobs/{job['id']}").status_code == 404


def test_the_cache_keeps_the_most_recently_used_specs_up_to_its_bound() -> None:
    stored = JobSpec.model_validate({"base_model": "org/model", "dataset": {"id": "org/rows"}}).model_dump(mode="json")
    cache = SpecCache(max_entries=2)
    cache.put("ftjob-a", stored)
    cache.put("ftjob-b", stored)
    assert cache.get("ftjob-a") is not None  # now the most recently used

    cache.put("ftjob-c", stored)

    assert cache.get("ftjob-b") is None
    assert cache.get("ftjob-a") == cache.get("ftjob-c") == JobSpec.model_validate(stored)


def test_a_stored_spec_that_does_not_validate_is_not_remembered() -> None:
    cache = SpecCache()

    with pytest.raises(ValidationError):
        cache.put("ftjob-x", {"base_model": ""})

    assert cache.get("ftjob-x") is None
