"""Submit jobs over HTTP to a running API and a real Celery worker (Redis broker) that trains in 4-bit on the CPU."""

import json
import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.auth import create_api_key
from shared.db import session_scope
from shared.migrate import upgrade_database
from tests.conftest import REDIS_URL, _create_postgres_db, _drop_postgres_db, clear_caches
from tests.services import running_stack, wait_for_end

pytestmark = [pytest.mark.training, pytest.mark.redis]
BATCH = 8


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, local_root: Path, tiny_model: Path
) -> Iterator[httpx.Client]:
    """A running API + worker on SQLite or PostgreSQL, and a client holding a fresh key."""
    data_dir = tmp_path_factory.mktemp(f"stack-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{data_dir / 'ftq.db'}"
    else:
        url = _create_postgres_db().replace("postgresql://", "postgresql+psycopg://")
    env = {
        "FTQ_DATA_DIR": str(data_dir),
        "DATABASE_URL": url,
        "BROKER_URL": REDIS_URL,
        "FTQ_QUEUE": f"ftq-e2e-{uuid.uuid4().hex[:8]}",
        "FTQ_LOCAL_ROOTS": str(local_root),
    }
    upgrade_database(url)
    with session_scope(url) as session:
        _key, raw = create_api_key(session=session, name="e2e")
        session.commit()
    with running_stack(env, data_dir / "logs") as base_url:
        with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {raw}"}, timeout=30) as client:
            yield client
    clear_caches()
    if request.param == "postgres":
        _drop_postgres_db(url)


def submit(client: httpx.Client, spec: dict[str, Any]) -> dict[str, Any]:
    """POST a spec; it must be accepted."""
    response = client.post("/jobs", json=spec)
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


def test_job_trains_a_4bit_lora_adapter_to_success(
    api: httpx.Client, tiny_model: Path, train_file: Path, local_root: Path, pricer_rows: list[Any]
) -> None:
    spec = {
        "base_model": str(tiny_model),
        "dataset": {"id": str(train_file)},
        "hyperparameters": {"batch_size": BATCH, "max_length": 320, "logging_steps": 2, "save_steps": 4},
    }

    job = wait_for_end(api, submit(api, spec)["id"])

    assert job["status"] == "succeeded", job["error"]
    assert job["attempt"] == 1 and job["started_at"] and job["finished_at"]
    total = math.ceil(48 / BATCH)
    assert job["progress"]["step"] == job["progress"]["total_steps"] == total
    assert job["progress"]["trained_tokens"] == job["stats"]["tokens"]
    assert job["progress"]["loss"] > 0
    assert_stats_count_the_completion_tokens(job["stats"], tiny_model, local_root, pricer_rows[:48])
    assert job["result"]["quantization"]["linear_4bit_layers"] == 2 * 7  # 2 layers x (q,k,v,o,gate,up,down)
    assert job["result"]["quantization"]["quant_type"] == "nf4"
    assert 0 < job["result"]["trainable_params"] < job["result"]["total_params"]
    assert_adapter_loads_with_peft_on_a_4bit_base(Path(job["result"]["adapter_path"]), tiny_model)


def assert_stats_count_the_completion_tokens(
    stats: dict[str, int], tiny_model: Path, local_root: Path, rows: list[Any]
) -> None:
    """`completion_tokens` is the number of tokens after the template (plus EOS) in every row."""
    from worker.recipe import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model), [local_root])
    after = [row["text"].rpartition("Price is $")[2] for row in rows]
    expected = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1 for text in after)
    assert stats == {
        "rows": 48,
        "tokens": stats["tokens"],
        "completion_tokens": expected,
        "truncated_rows": 0,
        "dropped_rows": 0,
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


def test_rows_without_the_template_fail_the_job_naming_the_rows(
    api: httpx.Client, tiny_model: Path, local_root: Path, pricer_rows: list[Any]
) -> None:
    bad = local_root / "data" / f"bad-{uuid.uuid4().hex[:6]}.jsonl"
    texts = [pricer_rows[0]["text"], "How much is this?\n\nA lamp", pricer_rows[1]["text"]]
    bad.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))

    job = wait_for_end(api, submit(api, {"base_model": str(tiny_model), "dataset": {"id": str(bad)}})["id"])

    assert job["status"] == "failed"
    assert job["error"]["code"] == "template_missing"
    assert job["error"]["param"] == "dataset.response_template"
    assert "rows 1 " in job["error"]["message"]
    assert job["result"]["adapter_path"] is None


def test_a_hub_model_that_cannot_be_found_fails_with_model_not_found(api: httpx.Client, train_file: Path) -> None:
    spec = {"base_model": "ftq-tests/no-such-model", "dataset": {"id": str(train_file)}}

    job = wait_for_end(api, submit(api, spec)["id"])

    assert job["status"] == "failed"
    assert (job["error"]["code"], job["error"]["param"]) == ("model_not_found", "base_model")
