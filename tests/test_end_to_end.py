"""Submit jobs over HTTP to a running API and a real Celery worker (Redis broker) that trains in 4-bit on the CPU."""

import io
import json
import math
import tarfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.services import StackClient, read_sse, spare_pids, trainer_pids, wait_for_end, wait_until

pytestmark = [pytest.mark.training, pytest.mark.redis]
BATCH = 8


def submit(client: httpx.Client, spec: dict[str, Any]) -> dict[str, Any]:
    """POST a spec; it must be accepted."""
    response = client.post("/jobs", json=spec)
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


# The training path is the same on either database; PostgreSQL runs it in the journey, team and fault tests.
@pytest.mark.parametrize("api", ["sqlite"], indirect=True)
def test_job_trains_a_4bit_lora_adapter_to_success(
    api: StackClient, tiny_model: Path, train_file: Path, local_root: Path, pricer_rows: list[Any]
) -> None:
    spec = {
        "base_model": str(tiny_model),
        "dataset": {"id": str(train_file)},
        "hyperparameters": {"batch_size": BATCH, "max_length": 320, "logging_steps": 2, "save_steps": 4},
    }

    job_id = submit(api, spec)["id"]
    streamed = read_sse(api, f"/jobs/{job_id}/events/stream")
    job = wait_for_end(api, job_id)

    assert job["status"] == "succeeded", job["error"]
    assert job["attempt"] == 1 and job["started_at"] and job["finished_at"]
    wait_until(lambda: f"job {job_id} attempt 1 ended" in (api.stack.log_dir / "worker.log").read_text())
    assert f"job {job_id} attempt 1 ended (exit code 0)" in (api.stack.log_dir / "worker.log").read_text()
    assert_events_tell_the_whole_story(api, job_id, streamed)
    assert_checkpoints_are_listed_and_download(api, job_id, total_steps=math.ceil(48 / BATCH))
    total = math.ceil(48 / BATCH)
    assert job["progress"]["step"] == job["progress"]["total_steps"] == total
    assert job["progress"]["trained_tokens"] == job["stats"]["completion_tokens"]  # one epoch
    assert job["progress"]["loss"] > 0
    assert_stats_count_the_completion_tokens(job["stats"], tiny_model, local_root, pricer_rows[:48])
    assert job["result"]["quantization"]["linear_4bit_layers"] == 2 * 7  # 2 layers x (q,k,v,o,gate,up,down)
    assert job["result"]["quantization"]["quant_type"] == "nf4"
    assert 0 < job["result"]["trainable_params"] < job["result"]["total_params"]
    assert_adapter_loads_with_peft_on_a_4bit_base(Path(job["result"]["adapter_path"]), tiny_model)


def assert_events_tell_the_whole_story(api: httpx.Client, job_id: str, streamed: list[tuple[str, str, Any]]) -> None:
    """The live stream carried the same events as the log, in order: statuses, metrics, checkpoints."""
    events = api.get(f"/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    assert [int(i) for i, _e, _d in streamed[:-1]] == [e["id"] for e in events]
    assert streamed[-1][1] == "end"
    statuses = [e["data"]["status"] for e in events if e["type"] == "status"]
    assert statuses == ["validating", "queued", "running", "succeeded"]
    progress = [e["data"] for e in events if e["type"] == "progress"]
    assert [p["step"] for p in progress] == [2, 4, 6] and all(p["loss"] > 0 for p in progress)
    assert [e["data"]["step"] for e in events if e["type"] == "checkpoint"] == [4, 6]
    assert any(e["type"] == "log" and e["data"].get("rows") == 48 for e in events)


def assert_checkpoints_are_listed_and_download(api: httpx.Client, job_id: str, total_steps: int) -> None:
    """Checkpoints at save_steps and at the end, complete on disk, each downloadable as an adapter archive."""
    checkpoints = api.get(f"/jobs/{job_id}/checkpoints").json()["data"]
    assert [c["step"] for c in checkpoints] == [4, total_steps]
    assert all(c["metrics"]["loss"] > 0 for c in checkpoints)
    for url in (checkpoints[0]["download_url"], f"/jobs/{job_id}/adapter/download"):
        response = api.get(url)
        assert response.status_code == 200 and response.headers["content-type"] == "application/gzip"
        with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as archive:
            names = {Path(name).name for name in archive.getnames()}
        assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= names
        assert "optimizer.pt" not in names


def assert_stats_count_the_completion_tokens(
    stats: dict[str, int], tiny_model: Path, local_root: Path, rows: list[Any]
) -> None:
    """`completion_tokens` is the number of tokens after the template (plus EOS) in every row."""
    from worker.sources import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model), [local_root])
    after = [row["text"].rpartition("Price is $")[2] for row in rows]
    expected = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1 for text in after)
    assert stats["tokens"] > stats["completion_tokens"] + 48 * 100  # every row's prompt is there too
    assert stats == {
        "rows": 48,
        "tokens": stats["tokens"],
        "completion_tokens": expected,
        "truncated_rows": 0,
        "dropped_rows": 0,
        "sampled_rows": None,  # the training pass counted every row
    }


def assert_adapter_loads_with_peft_on_a_4bit_base(adapter: Path, tiny_model: Path) -> None:
    """The saved adapter loads with PEFT on the 4-bit base, and its LoRA B matrices moved off their zero init."""
    import bitsandbytes as bnb
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (32, 64)
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, quantization_config=quant, device_map={"": "cpu"})
    model = PeftModel.from_pretrained(base, adapter)
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, bnb.nn.Linear4bit)
    assert q_proj.lora_B["default"].weight.abs().sum() > 0
    logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert logits.shape[-1] == base.config.vocab_size


@pytest.mark.parametrize("api", ["sqlite"], indirect=True)
def test_a_job_asking_for_fp8_trains_its_mlp_on_fp8_weight_copies_and_says_so(
    api: StackClient, tiny_model: Path, train_file: Path
) -> None:
    spec = {
        "base_model": str(tiny_model),
        "dataset": {"id": str(train_file)},
        "hyperparameters": {"batch_size": BATCH, "max_length": 320, "max_steps": 2},
        "performance": {"fp8": True},
    }

    job = wait_for_end(api, submit(api, spec)["id"])

    assert job["status"] == "succeeded", job["error"]
    events = api.get(f"/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
    (plan,) = [e for e in events if e["type"] == "log" and e["message"].startswith("performance:")]
    assert "fp8 on" in plan["message"] and plan["data"]["reasons"]["fp8"].startswith("as asked")
    # The tiny Llama's 2 layers: gate/up/down in FP8 (two one-byte copies each), q/k/v/o in bf16.
    copies = plan["data"]["weight_copies_bytes"]
    assert copies["fp8"] > 0 and copies["dequantized"] > 0


def test_rows_without_the_template_fail_the_job_naming_the_rows(
    api: httpx.Client, tiny_model: Path, local_root: Path, pricer_rows: list[Any]
) -> None:
    bad = local_root / "data" / f"bad-{uuid.uuid4().hex[:6]}.jsonl"
    texts = [pricer_rows[0]["text"], "How much is this?\n\nA lamp", pricer_rows[1]["text"]]
    bad.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))

    job = wait_for_end(api, submit(api, {"base_model": str(tiny_model), "dataset": {"id": str(bad)}})["id"])

    assert job["status"] == "failed"
    assert job["error"]["code"] == "template_missing"
    events = api.get(f"/jobs/{job['id']}/events").json()["data"]
    assert [e["data"]["code"] for e in events if e["type"] == "error"] == ["template_missing"]
    assert job["error"]["param"] == "dataset.response_template"
    assert "rows 1 " in job["error"]["message"]
    assert job["result"]["adapter_path"] is None


def test_a_hub_model_that_cannot_be_found_fails_with_model_not_found(api: httpx.Client, train_file: Path) -> None:
    spec = {"base_model": "ftq-tests/no-such-model", "dataset": {"id": str(train_file)}}

    job = wait_for_end(api, submit(api, spec)["id"])

    assert job["status"] == "failed"
    assert (job["error"]["code"], job["error"]["param"]) == ("model_not_found", "base_model")


def test_dry_run_answers_stats_and_planned_steps_and_stores_nothing(
    api: httpx.Client, tiny_model: Path, train_file: Path
) -> None:
    before = api.get("/jobs", params={"limit": 100}).json()["data"]
    spec = {"base_model": str(tiny_model), "dataset": {"id": str(train_file)}, "hyperparameters": {"max_length": 320}}

    response = api.post("/jobs", params={"dry_run": "true"}, json=spec)

    assert response.status_code == 200, response.text
    plan = response.json()
    assert plan["object"] == "fine_tuning.job.dry_run"
    assert plan["planned_steps"] == 3  # 48 rows at the course's batch of 16
    assert plan["stats"]["rows"] == 48 and plan["stats"]["completion_tokens"] > 48
    assert plan["spec"]["lora"]["r"] == 32
    assert api.get("/jobs", params={"limit": 100}).json()["data"] == before


def test_dry_run_of_bad_data_is_a_422_naming_the_field(api: httpx.Client, tiny_model: Path, train_file: Path) -> None:
    spec = {"base_model": str(tiny_model), "dataset": {"id": str(train_file), "response_template": "Cost: "}}

    response = api.post("/jobs", params={"dry_run": "true"}, json=spec)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "template_missing"
    assert response.json()["error"]["param"] == "dataset.response_template"


def test_validation_fills_stats_and_planned_steps_before_the_job_is_queued(
    api: httpx.Client, tiny_model: Path, train_file: Path
) -> None:
    spec = {"base_model": str(tiny_model), "dataset": {"id": str(train_file)}, "hyperparameters": {"max_length": 32}}

    job = wait_for_end(api, submit(api, spec)["id"])

    assert job["status"] == "failed" and job["attempt"] == 0, "it never reached a GPU worker"
    assert (job["error"]["code"], job["error"]["param"]) == ("completion_truncated", "hyperparameters.max_length")


def test_an_uploaded_file_is_read_by_the_validation_worker(
    api: httpx.Client, tiny_model: Path, train_file: Path
) -> None:
    uploaded = api.post("/files", files={"file": ("rows.jsonl", train_file.read_bytes())})
    assert uploaded.status_code == 201, uploaded.text
    spec = {
        "base_model": str(tiny_model),
        "dataset": {"id": uploaded.json()["id"]},
        "hyperparameters": {"max_length": 320},
    }

    plan = api.post("/jobs", params={"dry_run": "true"}, json=spec)

    assert plan.status_code == 200, plan.text
    assert plan.json()["stats"]["rows"] == 48


def test_twenty_concurrent_posts_with_one_idempotency_key_create_one_job(
    api: httpx.Client, tiny_model: Path, train_file: Path
) -> None:
    spec = {"base_model": str(tiny_model), "dataset": {"id": str(train_file)}, "metadata": {"run": uuid.uuid4().hex}}
    key = f"burst-{uuid.uuid4().hex}"

    def post(_: int) -> httpx.Response:
        return api.post("/jobs", json=spec, headers={"Idempotency-Key": key})

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(post, range(20)))

    created = {r.json()["id"] for r in responses if r.status_code == 201}
    assert len(created) == 1
    assert all(r.status_code in (201, 409) for r in responses)
    mine = [j for j in api.get("/jobs", params={"limit": 100}).json()["data"] if j["metadata"] == spec["metadata"]]
    assert [j["id"] for j in mine] == list(created)
    api.post(f"/jobs/{mine[0]['id']}/cancel")


@pytest.mark.parametrize("api", ["sqlite"], indirect=True)  # the spare does not touch the database's kind
def test_jobs_are_trained_by_spares_kept_while_idle_and_started_while_one_trains_and_show_their_job(
    api: StackClient, tiny_model: Path, train_file: Path
) -> None:
    spec = {
        "base_model": str(tiny_model),
        "dataset": {"id": str(train_file)},
        "hyperparameters": {"batch_size": BATCH, "max_length": 320, "max_steps": 2, "logging_steps": 1},
    }
    # The module's earlier jobs may still be winding down (a job reads as ended once its trainer records it, before
    # the process exits); the promise is about a worker that has gone idle.
    wait_until(lambda: bool(spare_pids(api.stack.settings.data_path)), timeout_s=60, what="a spare on the idle worker")
    first_id = submit(api, spec)["id"]
    job_id = submit(api, spec)["id"]  # waits behind the first: the worker starts a spare while the first trains
    seen_pids: set[int] = set()

    def ended() -> bool:
        seen_pids.update(trainer_pids(job_id))  # found by the job id its command line now shows
        return api.get(f"/jobs/{job_id}").json()["status"] in ("succeeded", "failed", "cancelled")

    wait_until(ended, timeout_s=300, what="the second job to end")
    first, second = wait_for_end(api, first_id), wait_for_end(api, job_id)

    log = (api.stack.settings.jobs_dir / job_id / "attempt-1.log").read_text()
    assert (first["status"], second["status"]) == ("succeeded", "succeeded"), second["error"]
    assert f"job {job_id} attempt 1 taken by spare trainer" in log
    assert "loss" in log, "the spare's own output went to the attempt's log"
    assert seen_pids, "the spare took the job's title"
    first_log = (api.stack.settings.jobs_dir / first_id / "attempt-1.log").read_text()
    assert f"job {first_id} attempt 1 taken by spare trainer" in first_log, "an idle worker keeps a spare ready"

    # Both spares are spent: once the worker is idle again it starts the next one without waiting for a job.
    wait_until(lambda: bool(spare_pids(api.stack.settings.data_path)), timeout_s=60, what="a spare on the idle worker")
    third_id = submit(api, spec)["id"]
    assert wait_for_end(api, third_id)["status"] == "succeeded"
    third_log = (api.stack.settings.jobs_dir / third_id / "attempt-1.log").read_text()
    assert f"job {third_id} attempt 1 taken by spare trainer" in third_log, "the worker kept a spare after its jobs"
