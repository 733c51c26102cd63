"""The admin's commands on the server: `ftq keys create|list|revoke` and `ftq users list|set`."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.main import create_app


@pytest.fixture
def ftq(env: dict[str, str]) -> Any:
    """Run `ftq ARGS...` against the test's database; returns the completed process."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ftq.cli", *args], capture_output=True, text=True, timeout=60, env=_env(env)
        )

    return run


def _env(values: dict[str, str]) -> dict[str, str]:
    import os

    return {**os.environ, **values}


def test_keys_create_list_and_revoke_work_end_to_end(ftq: Any, env: dict[str, str]) -> None:
    created = ftq("keys", "create", "alice")
    key = created.stdout.strip().splitlines()[-1]
    with TestClient(create_app(), headers={"Authorization": f"Bearer {key}"}) as alice:
        assert alice.get("/me").json()["name"] == "alice"

        listed = json.loads(ftq("keys", "list", "--json").stdout)
        revoked = ftq("keys", "revoke", listed[0]["prefix"])

        assert created.returncode == 0 and key.startswith("ftq_")
        assert [(k["user"], k["admin"], k["revoked_at"]) for k in listed] == [("alice", False, None)]
        assert key not in json.dumps(listed), "a listed key shows its prefix only"
        assert revoked.returncode == 0, revoked.stdout + revoked.stderr
        assert alice.get("/me").status_code == 401


def test_a_second_key_of_a_user_sees_the_same_jobs(ftq: Any, spec: dict[str, Any]) -> None:
    first = ftq("keys", "create", "alice").stdout.strip().splitlines()[-1]
    second = ftq("keys", "create", "alice").stdout.strip().splitlines()[-1]
    with (
        TestClient(create_app(), headers={"Authorization": f"Bearer {first}"}) as one,
        TestClient(create_app(), headers={"Authorization": f"Bearer {second}"}) as two,
    ):
        job_id = one.post("/jobs", json=spec).json()["id"]

        assert two.get(f"/jobs/{job_id}").status_code == 200


def test_users_set_changes_limits_and_priority_and_rejects_bad_values(ftq: Any) -> None:
    ftq("keys", "create", "bob")

    changed = ftq("users", "set", "bob", "--priority", "4", "--limit", "max_running=1", "--limit", "max_steps=500")
    lifted = ftq("users", "set", "bob", "--limit", "max_steps=none")
    bad = ftq("users", "set", "bob", "--limit", "max_running=-1")
    unknown = ftq("users", "set", "bob", "--limit", "max_gpus=2")
    users = json.loads(ftq("users", "list", "--json").stdout)

    assert changed.returncode == 0 and lifted.returncode == 0, changed.stdout + lifted.stdout
    assert users == [{"id": users[0]["id"], "name": "bob", "admin": False, "priority": 4, "limits": {"max_running": 1}}]
    assert bad.returncode == 1 and "max_running" in bad.stdout
    assert unknown.returncode == 2 and "max_gpus" not in users[0]["limits"]


def test_revoking_an_unknown_key_fails_clearly(ftq: Any, tmp_path: Path) -> None:
    answer = ftq("keys", "revoke", "ftq_nothing")

    assert answer.returncode == 1
    assert "no key" in answer.stdout
