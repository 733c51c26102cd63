"""Run the real API and Celery worker as processes for end-to-end tests."""

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from ftq.stack import stack_commands
from shared.settings import Settings

TERMINAL = {"succeeded", "failed", "cancelled"}
# The worker may not reach any hub; W&B stays offline.
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "TOKENIZERS_PARALLELISM": "false",
}


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(base_url: str, timeout_s: float = 60) -> None:
    """Wait until the API answers /healthz."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{base_url} did not become healthy")


def stop_process_group(process: subprocess.Popen[bytes], grace_s: float = 15) -> None:
    """SIGTERM a process group, then SIGKILL it after the grace period."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def running_stack(env: dict[str, str], log_dir: Path) -> Iterator[str]:
    """Start the API and one worker with `env`; yield the API's base URL; stop both."""
    full_env = {**os.environ, **OFFLINE, "FTQ_PROGRESS_INTERVAL": "0.2", **env}
    settings = Settings(**env)
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    processes = []
    names = ("api", "worker", "validator")
    for name, command in zip(names, stack_commands(settings, "127.0.0.1", port), strict=True):
        log = open(log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        processes.append(
            subprocess.Popen(command, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base_url)
        yield base_url
    finally:
        for process in processes:
            stop_process_group(process)


def wait_for_end(client: httpx.Client, job_id: str, timeout_s: float = 300) -> dict[str, Any]:
    """Poll a job until it reaches a terminal status; return it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if job["status"] in TERMINAL:
            return job
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s}s")


def read_sse(client: httpx.Client, url: str, headers: dict[str, str] | None = None) -> list[tuple[str, str, Any]]:
    """Read a whole Server-Sent Events stream as (id, event, data) tuples."""
    out, current = [], {"id": "", "event": "message", "data": ""}
    with client.stream("GET", url, headers=headers or {}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                out.append((current["id"], current["event"], json.loads(current["data"] or "null")))
                current = {"id": "", "event": "message", "data": ""}
            elif not line.startswith(":"):
                field, _, value = line.partition(": ")
                current[field] = value
    return out


def trainer_pids(job_id: str) -> list[int]:
    """Pids of live `worker.runner` processes training this job."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            status = (entry / "status").read_text()
        except OSError:
            continue
        if b"worker.runner" in args and job_id.encode() in args and "State:\tZ" not in status:
            pids.append(int(entry.name))
    return pids


def wait_until(predicate: Callable[[], bool], timeout_s: float = 120, what: str = "condition") -> None:
    """Poll until `predicate()` holds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")
