"""The Python client, the `ftq` CLI on it, and the plain-HTTP example script, against a real running stack."""

import json
import os
import pty
import select
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ftq import APIError, Client
from ftq.client import resolve_config
from tests.conftest import REPO, user_of
from tests.services import StackClient, wait_until

pytestmark = [pytest.mark.training, pytest.mark.redis]


@pytest.fixture(scope="module")
def stack(shared_stack: StackClient) -> Iterator[StackClient]:
    """The shared running stack (SQLite, Redis) and a client of it holding a key of this module's user."""
    with user_of(shared_stack, "client-user") as client:
        yield client


@pytest.fixture(scope="module")
def api_key(stack: StackClient) -> str:
    """The stack client's API key."""
    return str(stack.headers["Authorization"]).split()[1]


@pytest.fixture(scope="module")
def client(stack: StackClient, api_key: str) -> Iterator[Client]:
    """The Python client, pointed at the stack."""
    with Client(stack.stack.base_url, api_key) as ftq:
        yield ftq


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, train_file: Path) -> Path:
    """A YAML spec whose model and dataset are given relative to the file, as examples/pricer-tiny.yaml does."""
    folder = tmp_path_factory.mktemp("specs")

    def relative(target: Path) -> str:
        path = os.path.relpath(target, folder)
        return path if path.startswith("../") else f"./{path}"

    spec = {
        "base_model": relative(tiny_model),
        "dataset": {"id": relative(train_file)},
        "hyperparameters": {"batch_size": 8, "max_length": 320, "max_steps": 4, "save_steps": 2, "logging_steps": 1},
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def finished(client: Client, spec_file: Path) -> Any:
    """A job submitted from the YAML file through the client and waited for."""
    job = client.jobs.create(spec_file)
    return client.jobs.wait(job.id, poll_s=0.5, timeout_s=300)


def ftq(api_url: str, api_key: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the `ftq` CLI as a user would (its config from the environment, none from a file)."""
    env = {**os.environ, "FTQ_URL": api_url, "FTQ_API_KEY": api_key, "XDG_CONFIG_HOME": "/nonexistent"}
    return subprocess.run(
        [sys.executable, "-m", "ftq.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_the_client_submits_a_yaml_spec_and_waits_for_the_typed_result(finished: Any, train_file: Path) -> None:
    assert finished.status.value == "succeeded", finished.error
    assert finished.spec.dataset.id == str(train_file), "a ./ path in the file was sent absolute"
    assert finished.progress.step == finished.progress.total_steps == 4


def test_the_client_lists_every_page_streams_events_and_downloads(
    client: Client, finished: Any, tmp_path: Path
) -> None:
    extra = [client.jobs.create({**finished.spec.model_dump(mode="json"), "metadata": {"n": str(n)}}) for n in range(2)]
    for job in extra:
        client.jobs.cancel(job.id)

    listed = [job.id for job in client.jobs.list(page_size=1)]
    streamed = list(client.jobs.events(finished.id, stream=True))
    archive = client.jobs.download(finished.id, tmp_path, step=2)

    assert listed[:3] == [extra[1].id, extra[0].id, finished.id]
    assert [e.id for e in streamed] == [e.id for e in client.jobs.events(finished.id)]
    assert streamed[-1].type.value == "status" and streamed[-1].data["status"] == "succeeded"
    assert [c.step for c in client.jobs.checkpoints(finished.id)] == [2, 4]
    with tarfile.open(archive) as tar:
        assert any(name.endswith("adapter_config.json") for name in tar.getnames())


def test_the_client_raises_the_apis_error_code_status_and_field(client: Client, spec_file: Path) -> None:
    with pytest.raises(APIError) as missing:
        client.jobs.get("ftjob-doesnotexist")
    with pytest.raises(APIError) as invalid:
        client.jobs.create({"base_model": "/etc", "dataset": {"id": "/etc/passwd"}})

    assert (missing.value.status_code, missing.value.code) == (404, "not_found")
    assert (invalid.value.status_code, invalid.value.code, invalid.value.param) == (
        422,
        "path_not_allowed",
        "base_model",
    )


def test_the_client_reads_its_settings_from_env_then_config_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "ftq").mkdir()
    (tmp_path / "ftq" / "config.toml").write_text('url = "http://box:9000"\napi_key = "ftq_fromfile"\n')
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("FTQ_URL", raising=False)
    monkeypatch.setenv("FTQ_API_KEY", "ftq_fromenv")

    assert resolve_config(None, None) == ("http://box:9000", "ftq_fromenv")
    assert resolve_config("http://other/", "ftq_arg") == ("http://other", "ftq_arg")


def test_the_cli_submits_waits_and_exits_by_outcome(
    stack: StackClient, api_key: str, spec_file: Path, tmp_path: Path
) -> None:
    url = stack.stack.base_url
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        yaml.safe_dump({**yaml.safe_load(spec_file.read_text()), "dataset": {"id": str(spec_file.parent / "x.jsonl")}})
    )

    ok = ftq(url, api_key, "submit", str(spec_file), "--wait")
    refused = ftq(url, api_key, "submit", str(broken), "--wait")

    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.splitlines()[-1].startswith("succeeded in ")
    assert "step 4/4" in ok.stdout, "a line per change when not on a terminal"
    assert refused.returncode == 1
    assert "path_not_allowed" in refused.stderr or "dataset_not_found" in refused.stderr


def test_the_cli_read_commands_print_json_for_scripts(
    stack: StackClient, api_key: str, finished: Any, tmp_path: Path
) -> None:
    url = stack.stack.base_url

    listed = json.loads(ftq(url, api_key, "list", "--json").stdout)
    status = json.loads(ftq(url, api_key, "status", finished.id, "--json").stdout)
    checkpoints = json.loads(ftq(url, api_key, "checkpoints", finished.id, "--json").stdout)
    logs = [json.loads(line) for line in ftq(url, api_key, "logs", finished.id, "--json").stdout.splitlines()]
    downloaded = ftq(url, api_key, "download", finished.id, "-o", str(tmp_path))
    uploaded = json.loads(
        ftq(url, api_key, "files", "upload", str(REPO / "examples/data/pricer-400.jsonl"), "--json").stdout
    )

    assert finished.id in [job["id"] for job in listed]
    assert (status["id"], status["status"]) == (finished.id, "succeeded")
    assert [c["step"] for c in checkpoints] == [2, 4]
    assert logs[-1]["data"]["status"] == "succeeded"
    assert downloaded.returncode == 0 and Path(downloaded.stdout.strip()).stat().st_size > 1000
    assert (uploaded["format"], uploaded["rows"]) == ("jsonl", 400)


def _read_pty_until_exit(process: subprocess.Popen[bytes], fd: int, on_output: Any, timeout_s: float) -> str:
    out = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            out += chunk
            on_output(out.decode(errors="replace"))
        elif process.poll() is not None:
            break
    return out.decode(errors="replace")


def test_logs_follow_draws_a_progress_bar_on_a_terminal_and_exits_3_when_cancelled(
    stack: StackClient, api_key: str, client: Client, finished: Any
) -> None:
    long = {
        **finished.spec.model_dump(mode="json"),
        "hyperparameters": {"batch_size": 4, "max_length": 320, "max_steps": 2000},
    }
    job = client.jobs.create(long)
    wait_until(lambda: client.jobs.get(job.id).progress.step >= 2, 120, "the job to train")
    env = {**os.environ, "FTQ_URL": stack.stack.base_url, "FTQ_API_KEY": api_key, "COLUMNS": "160", "TERM": "xterm"}
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "ftq.cli", "logs", job.id, "-f"],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
    )
    os.close(follower)
    cancelled = False

    def cancel_once_the_bar_shows(text: str) -> None:
        nonlocal cancelled
        if not cancelled and "tok/s" in text and "ETA" in text:
            client.jobs.cancel(job.id)
            cancelled = True

    output = _read_pty_until_exit(process, leader, cancel_once_the_bar_shows, 120)
    process.wait(timeout=30)
    os.close(leader)

    assert cancelled, output[-2000:]
    assert "━" in output and f"/{2000}" in output, "rich's bar with step/total"
    assert "running" in output and "cancel requested" in output, "events printed above the bar"
    assert "cancelled" in output.splitlines()[-1]
    assert process.returncode == 3


def test_the_plain_http_example_submits_and_polls_to_success(stack: StackClient, api_key: str, spec_file: Path) -> None:
    spec = yaml.safe_load(spec_file.read_text())
    spec["base_model"] = str((spec_file.parent / spec["base_model"]).resolve())
    spec["dataset"]["id"] = str((spec_file.parent / spec["dataset"]["id"]).resolve())
    path = spec_file.parent / "plain.json"
    path.write_text(json.dumps(spec))
    env = {**os.environ, "FTQ_URL": stack.stack.base_url, "FTQ_API_KEY": api_key}

    run = subprocess.run(
        [sys.executable, str(REPO / "examples" / "submit_and_poll.py"), str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )

    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines()[0].startswith("submitted ftjob-")
    assert run.stdout.splitlines()[-1].startswith("succeeded: adapter at ")


def test_the_course_example_writes_out_the_recipe_and_the_tiny_one_keeps_it() -> None:
    from ftq.client import load_spec
    from shared.spec import Hyperparameters, JobSpec, LoraSpec, QuantizationSpec

    course = JobSpec.model_validate(load_spec(REPO / "examples" / "pricer.yaml"))
    tiny = JobSpec.model_validate(load_spec(REPO / "examples" / "pricer-tiny.yaml"))
    hp, lora = course.hyperparameters, course.lora

    assert (course.base_model, course.dataset.id) == ("meta-llama/Llama-3.1-8B", "ed-donner/pricer-data")
    assert course.hub is not None and course.hub.private and course.wandb is not None
    assert (hp.max_length, hp.batch_size, hp.learning_rate, hp.save_steps) == (182, 16, 1e-4, 5000)
    assert (lora.r, lora.alpha, lora.dropout) == (32, 64, 0.1)
    assert (hp, lora, course.quantization) == (Hyperparameters(), LoraSpec(), QuantizationSpec()), "the defaults"
    assert (tiny.lora, tiny.quantization) == (course.lora, course.quantization)
    assert tiny.base_model == str(REPO / ".ftq-data" / "files" / "models" / "tiny-llama")


def test_an_evaluation_spec_sends_local_paths_absolute_and_keeps_only_the_settings_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    with Client(base_url="http://127.0.0.1:9", api_key="unused") as offline:  # no request is made
        spec = offline.jobs.evaluation_spec(
            {"id": "./rows.jsonl", "max_rows": 5},
            adapter="./adapter",
            base_model="org/base",
            baseline=True,
            metric=None,
        )
        with pytest.raises(ValueError, match="base model"):
            offline.jobs.evaluation_spec("org/rows")

    assert spec == {
        "kind": "evaluation",
        "base_model": "org/base",
        "adapter": str(tmp_path / "adapter"),
        "evaluation": {"dataset": {"id": str(tmp_path / "rows.jsonl"), "max_rows": 5}, "baseline": True},
    }
