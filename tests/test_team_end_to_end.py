"""Two users share one real stack (API, GPU worker, validation worker, PostgreSQL, Redis, a Hub stand-in):
isolation, their own tokens (and no token anywhere it must not be), limits, fair-share order and the rate limit.

The scenario runs once (the `team` fixture) and records what happened; each test checks one promise.
"""

import json
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
from sqlalchemy import inspect

from shared.auth import create_api_key
from shared.db import get_engine, libpq_url, session_scope
from tests.conftest import REDIS_URL, stack_client
from tests.hub_standin import HubStandIn
from tests.services import StackClient, wait_for_end, wait_until

pytestmark = [pytest.mark.training, pytest.mark.postgres, pytest.mark.redis]

ALICE_HF = f"hf_aliceSecret{uuid.uuid4().hex}"
ALICE_WANDB = f"aliceWandbKey{uuid.uuid4().hex}"
TEAM_HF = f"hf_teamDefault{uuid.uuid4().hex}"  # the stand-in refuses it: only Alice's token opens her repo
SECRETS = (ALICE_HF, ALICE_WANDB)


@dataclass
class Team:
    """What the scenario did and saw."""

    alice: httpx.Client
    bob: httpx.Client
    admin: httpx.Client
    hub: HubStandIn
    data_dir: Path
    database_url: str
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    answers: dict[str, httpx.Response] = field(default_factory=dict)
    positions: dict[str, int | None] = field(default_factory=dict)
    workers_seen_by: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    responses: list[str] = field(default_factory=list)
    command_lines: set[str] = field(default_factory=set)
    redis_log: str = ""


class CommandLineSampler(threading.Thread):
    """Reads every process's command line every 50 ms while the scenario runs."""

    def __init__(self, seen: set[str]) -> None:
        super().__init__(daemon=True)
        self.seen = seen
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.05):
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    try:
                        self.seen.add((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
                    except OSError:
                        continue


class RedisMonitor(threading.Thread):
    """Records every command the Redis server runs (Celery's messages included) until `stop`."""

    SENTINEL = f"ftq-monitor-stop-{uuid.uuid4().hex}"

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.commands: list[str] = []
        self.ready = threading.Event()

    def run(self) -> None:
        with redis.Redis.from_url(REDIS_URL).monitor() as monitor:
            self.ready.set()
            for entry in monitor.listen():
                if self.SENTINEL in entry["command"]:
                    return
                self.commands.append(entry["command"])

    def stop(self) -> str:
        """Stop recording; everything recorded, a command a line."""
        redis.Redis.from_url(REDIS_URL).echo(self.SENTINEL)
        self.join(timeout=30)
        return "\n".join(self.commands)


def _client(stack_client: StackClient, raw_key: str, log: list[str]) -> httpx.Client:
    def keep(response: httpx.Response) -> None:
        response.read()
        log.append(response.text)

    return httpx.Client(
        base_url=stack_client.stack.base_url,
        headers={"Authorization": f"Bearer {raw_key}"},
        timeout=30,
        event_hooks={"response": [keep]},
    )


def _key(url: str, name: str, *, admin: bool = False) -> str:
    with session_scope(url) as session:
        _key_row, raw = create_api_key(session=session, name=name, is_admin=admin)
        session.commit()
    return raw


def _status(client: httpx.Client, job_id: str) -> str:
    return str(client.get(f"/jobs/{job_id}").json()["status"])


@pytest.fixture(scope="module")
def team(
    tmp_path_factory: pytest.TempPathFactory, local_root: Path, tiny_model: Path, train_file: Path
) -> Iterator[Team]:
    """Run the two-user scenario on PostgreSQL and Redis and record it."""
    hub = HubStandIn(token=ALICE_HF)
    data_dir = tmp_path_factory.mktemp("team")
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_TOKEN": TEAM_HF}
    with hub, stack_client("postgres", data_dir, local_root, env) as e2e:
        monitor = RedisMonitor()
        monitor.start()
        assert monitor.ready.wait(10)
        url = e2e.stack.settings.db_url
        log: list[str] = []
        alice, bob = _client(e2e, _key(url, "alice"), log), _client(e2e, _key(url, "bob"), log)
        admin = _client(e2e, _key(url, "root", admin=True), log)
        team = Team(alice, bob, admin, hub, data_dir, url, responses=log)
        sampler = CommandLineSampler(team.command_lines)
        sampler.start()
        try:
            _play(team, str(tiny_model), str(train_file))
        finally:
            sampler.stopped.set()
            team.redis_log = monitor.stop()
        yield team


def _play(team: Team, model: str, rows: str) -> None:
    alice, bob, admin = team.alice, team.bob, team.admin
    base = {"base_model": model, "dataset": {"id": rows}}
    small = {"batch_size": 8, "max_length": 320, "max_steps": 2}
    team.answers["alice_secrets"] = alice.put("/me/secrets", json={"hf_token": ALICE_HF, "wandb_api_key": ALICE_WANDB})
    team.answers["bob_limits"] = admin.patch("/users/bob", json={"limits": {"max_queued": 1, "max_steps": 20}})

    # Alice's long job takes the only GPU worker; then Alice queues two more and Bob one.
    long = {**small, "max_steps": 5000, "logging_steps": 1}
    a1 = alice.post("/jobs", json={**base, "hyperparameters": long}).json()["id"]
    wait_until(lambda: _status(alice, a1) == "running", 120, "alice's first job running")
    pushing = {"hub": {"repo_id": "alice/pricer-tiny"}, "wandb": {"project": "team-e2e"}}
    a2 = alice.post("/jobs", json={**base, "hyperparameters": {**small, "save_steps": 1}, **pushing}).json()["id"]
    a3 = alice.post("/jobs", json={**base, "hyperparameters": small}).json()["id"]
    b1 = bob.post("/jobs", json={**base, "hyperparameters": small, "hub": {"repo_id": "bob/pricer-tiny"}}).json()["id"]
    team.jobs = {name: {"id": job_id} for name, job_id in (("a1", a1), ("a2", a2), ("a3", a3), ("b1", b1))}
    wait_until(lambda: all(_status(admin, j) == "queued" for j in (a2, a3, b1)), 120, "three queued jobs")

    team.positions = {j["id"]: j["queue_position"] for j in admin.get("/jobs").json()["data"]}
    team.workers_seen_by = {who: c.get("/workers").json()["data"] for who, c in (("alice", alice), ("bob", bob))}
    team.answers.update(
        bob_reads_a1=bob.get(f"/jobs/{a1}"),
        bob_cancels_a2=bob.post(f"/jobs/{a2}/cancel"),
        alice_reads_b1=alice.get(f"/jobs/{b1}"),
        bob_lists=bob.get("/jobs"),
        alice_lists=alice.get("/jobs"),
        bob_over_steps=bob.post("/jobs", json={**base, "hyperparameters": {**small, "max_steps": 50}}),
        bob_over_queue=bob.post("/jobs", json={**base, "hyperparameters": small}),
    )
    alice.post(f"/jobs/{a1}/cancel")
    for name, job in team.jobs.items():
        team.jobs[name] = wait_for_end(admin, job["id"], timeout_s=300)
        team.jobs[name]["events"] = admin.get(f"/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]

    # Last, as Bob's bucket stays empty for a while: Bob hammers the API until it pushes back.
    for _ in range(200):
        answer = bob.get("/me")
        if answer.status_code == 429:
            break
    team.answers["bob_limited"] = answer
    team.answers["alice_after_bob_limited"] = alice.get("/me")


def test_each_user_sees_and_cancels_only_their_own_jobs(team: Team) -> None:
    a = team.answers
    jobs = {name: job["id"] for name, job in team.jobs.items()}

    assert a["bob_reads_a1"].status_code == 404 and a["alice_reads_b1"].status_code == 404
    assert a["bob_cancels_a2"].status_code == 404
    assert [j["id"] for j in a["bob_lists"].json()["data"]] == [jobs["b1"]]
    assert {j["id"] for j in a["alice_lists"].json()["data"]} == {jobs["a1"], jobs["a2"], jobs["a3"]}
    assert {j["owner"] for j in team.admin.get("/jobs").json()["data"]} == {"alice", "bob"}
    assert team.jobs["a2"]["status"] == "succeeded", "Bob's cancel did not touch Alice's job"


def test_a_user_over_a_limit_gets_a_422_naming_it(team: Team) -> None:
    steps, queue = team.answers["bob_over_steps"], team.answers["bob_over_queue"]

    assert team.answers["bob_limits"].status_code == 200
    assert (steps.status_code, steps.json()["error"]["limit"], steps.json()["error"]["param"]) == (
        422,
        "max_steps",
        "hyperparameters.max_steps",
    )
    assert (queue.status_code, queue.json()["error"]["limit"]) == (422, "max_queued")


def test_a_user_without_running_jobs_goes_before_older_jobs_of_a_user_with_one(team: Team) -> None:
    jobs = team.jobs
    started = sorted(("a2", "a3", "b1"), key=lambda name: jobs[name]["started_at"])

    assert [team.positions[jobs[n]["id"]] for n in ("b1", "a2", "a3")] == [1, 2, 3]
    assert started == ["b1", "a2", "a3"]
    assert jobs["a1"]["status"] == "cancelled"


def test_a_job_uses_its_owners_tokens_and_never_anothers(team: Team) -> None:
    a2, b1 = team.jobs["a2"], team.jobs["b1"]

    assert team.answers["alice_secrets"].json()["hf_token"]["set"] is True
    assert a2["status"] == "succeeded", a2["error"]
    assert [c.summary for c in team.hub.repos["alice/pricer-tiny"].commits][-1] == "ftq: final adapter"
    assert a2["result"]["hub_commit_url"].startswith(team.hub.url)
    # Bob stored no token, so his job ran with the team's, which cannot open the Hub here.
    assert (b1["status"], b1["error"]["code"], b1["error"]["param"]) == ("failed", "hub_error", "hub.repo_id")
    assert "bob/pricer-tiny" not in team.hub.repos


def test_workers_show_the_running_job_only_to_whom_may_see_it(team: Team) -> None:
    a1 = team.jobs["a1"]["id"]
    seen = {who: [w for w in workers if w["kind"] == "gpu"] for who, workers in team.workers_seen_by.items()}

    assert [(w["state"], w["current_job"]["id"]) for w in seen["alice"]] == [("online", a1)]
    assert [(w["state"], w["current_job"]["id"]) for w in seen["bob"]] == [("online", None)]
    assert seen["bob"][0]["name"].startswith("cpu0@")


def test_the_rate_limit_stops_one_user_with_retry_after_and_spares_the_other(team: Team) -> None:
    limited = team.answers["bob_limited"]

    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    assert team.answers["alice_after_bob_limited"].status_code == 200


def _database_text(url: str) -> str:
    tables = inspect(get_engine(url)).get_table_names()
    with psycopg.connect(libpq_url(url)) as conn:
        return "\n".join(
            str(row) for table in tables for row in conn.execute(f'SELECT row_to_json(t)::text FROM "{table}" t')
        )


def _files_containing(root: Path, secret: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret in p.read_bytes()]


def test_no_token_appears_in_responses_events_logs_tasks_command_lines_files_or_the_database(team: Team) -> None:
    events = json.dumps([team.jobs[name]["events"] for name in team.jobs])
    pushed = b"".join(content for repo in team.hub.repos.values() for content in repo.files.values())
    database = _database_text(team.database_url)
    training_args = list(team.data_dir.rglob("training_args.bin"))
    wandb_files = list(team.data_dir.rglob("*.wandb"))

    assert len(team.responses) > 50 and training_args and wandb_files, "the scan covers real output"
    assert database.count('"ciphertext"') == 2, "both of Alice's tokens are stored (encrypted)"
    assert len(team.command_lines) > 10 and any("worker.runner" in c for c in team.command_lines)
    assert "ftq.run_job" in team.redis_log, "the Redis log holds the task messages"
    for secret in SECRETS:
        assert not any(secret in text for text in team.responses), "an API response"
        assert secret not in events, "an event"
        assert _files_containing(team.data_dir, secret.encode()) == [], "a log, training_args.bin or W&B file"
        assert secret not in team.redis_log, "a Celery message"
        assert not any(secret in line for line in team.command_lines), "a command line"
        assert secret.encode() not in pushed, "a file pushed to the Hub"
        assert secret not in database, "the database (only ciphertext)"
    assert os.environ.get("HF_TOKEN") != ALICE_HF
