"""Hub pushes against a local HTTP stand-in for the Hub (`tests/hub_standin.py`): the real huggingface_hub
client runs in the worker, only the server is ours."""

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import stack_client
from tests.hub_standin import HubStandIn
from tests.services import StackClient, wait_for_end

pytestmark = [pytest.mark.training, pytest.mark.redis]
HF_TOKEN = f"hf_fakeTokenForTests{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def hub() -> Iterator[HubStandIn]:
    """The Hub stand-in, accepting only HF_TOKEN."""
    with HubStandIn(token=HF_TOKEN) as standin:
        yield standin


@pytest.fixture(scope="module")
def hub_api(tmp_path_factory: pytest.TempPathFactory, local_root: Path, hub: HubStandIn) -> Iterator[StackClient]:
    """A running stack whose Hub is the stand-in and whose server-side token is HF_TOKEN."""
    hub_env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_TOKEN": HF_TOKEN}
    with stack_client("sqlite", tmp_path_factory.mktemp("stack-hub"), local_root, hub_env) as client:
        yield client


def test_checkpoints_and_the_final_adapter_are_pushed_with_their_commit_urls(
    hub_api: httpx.Client, hub: HubStandIn, tiny_model: Path, train_file: Path
) -> None:
    spec: dict[str, Any] = {
        "base_model": str(tiny_model),
        "dataset": {"id": str(train_file)},
        "hyperparameters": {"batch_size": 8, "max_length": 320, "save_steps": 2, "max_steps": 4},
        "hub": {"repo_id": "team/pricer-tiny"},
    }
    created = hub_api.post("/jobs", json=spec)
    assert created.status_code == 201, created.text

    job = wait_for_end(hub_api, created.json()["id"])

    assert job["status"] == "succeeded", job["error"]
    repo = hub.repos["team/pricer-tiny"]
    assert repo.private is True
    summaries = [c.summary for c in repo.commits]
    assert summaries == ["Training in progress, step 2", "Training in progress, step 4", "ftq: final adapter"]
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "README.md"} <= set(repo.files)
    assert not any(name.endswith((".bin", ".pt", ".pth")) for c in repo.commits for name in c.files)
    card = repo.files["README.md"].decode()
    assert hub.cards[-1]["base_model"] == str(tiny_model) and hub.cards[-1]["library_name"] == "peft"
    assert "| learning_rate | 0.0001 |" in card and "final training loss" in card

    checkpoints = hub_api.get(f"/jobs/{job['id']}/checkpoints").json()["data"]
    commit_urls = [f"{hub.url}/team/pricer-tiny/commit/{c.oid}" for c in repo.commits]
    assert [c["hub_commit_url"] for c in checkpoints] == commit_urls[:2]
    assert job["result"]["hub_commit_url"] == commit_urls[2]
    events = hub_api.get(f"/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
    assert [e["data"]["commit_url"] for e in events if e["type"] == "hub"] == commit_urls
    assert hub.seen_authorization == {f"Bearer {HF_TOKEN}"}
    assert_token_appears_nowhere(hub_api, job, repo.commits)


def assert_token_appears_nowhere(api: httpx.Client, job: dict[str, Any], commits: list[Any]) -> None:
    """The server-side token is in no response, event, pushed file, or file the job wrote (training_args.bin too)."""
    job_id = job["id"]
    responses = [api.get(path).text for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/events?limit=1000", "/jobs")]
    assert all(HF_TOKEN not in text for text in responses)
    assert all(HF_TOKEN.encode() not in data for c in commits for data in c.files.values())
    job_dir = Path(job["result"]["adapter_path"]).parent
    written = [p for p in job_dir.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in written)
    assert all(HF_TOKEN.encode() not in p.read_bytes() for p in written)


def test_a_token_the_hub_refuses_fails_the_job_before_training(
    hub_api: httpx.Client, hub: HubStandIn, tiny_model: Path, train_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.token = "hf_someone_else"
    try:
        spec = {
            "base_model": str(tiny_model),
            "dataset": {"id": str(train_file)},
            "hyperparameters": {"max_length": 320},
            "hub": {"repo_id": "team/x"},
        }
        job = wait_for_end(hub_api, hub_api.post("/jobs", json=spec).json()["id"])
    finally:
        hub.token = HF_TOKEN

    assert job["status"] == "failed"
    assert (job["error"]["code"], job["error"]["param"]) == ("hub_error", "hub.repo_id")
    assert job["progress"]["step"] == 0
    assert HF_TOKEN not in json.dumps(job)
