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

from ftq.stack import gpu_worker, stack_commands
from shared.settings import Settings

TERMINAL = {"succeeded", "failed", "cancelled"}
# The worker may not reach any hub; W&B stays offline.
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "TOKENIZERS_PARALLELISM": "false",
}
# Short leases and quick progress so tests see crashes and progress within seconds.
FAST_TIMERS = {
    "FTQ_PROGRESS_INTERVAL": "0.2",
    "FTQ_LEASE_TTL": "5",
    "FTQ_RECONCILE_INTERVAL": "0.5",
    "FTQ_REDISPATCH_AFTER": "3",
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
    stop_process_groups([process], grace_s)


def stop_process_groups(processes: list[subprocess.Popen[bytes]], grace_s: float = 15) -> None:
    """SIGTERM every process group at once (they shut down side by side), then SIGKILL those still running after
    the grace period."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10)):
        running = []
        for process in processes:
            try:
                os.killpg(process.pid, sig)
                running.append(process)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + wait
        processes = []
        for process in running:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                processes.append(process)
        if not processes:
            return


class RunningStack:
    """The API and workers of a test, with the means to kill and restart the GPU worker."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = {**os.environ, **OFFLINE, **FAST_TIMERS, **env}
        self.settings = Settings(**env)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        """Start one process in its own group, logging to `<log_dir>/<name>.log`."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as log:
            self.processes[name] = subprocess.Popen(
                command,
                env={**self.env, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill_worker(self) -> None:
        """SIGKILL the GPU worker's whole process group, as a crash or a lost machine would."""
        os.killpg(self.processes["worker"].pid, signal.SIGKILL)
        self.processes["worker"].wait()

    def terminate_worker(self, timeout_s: float = 90) -> int:
        """SIGTERM the GPU worker's main process, as a deploy would, and wait for it to exit."""
        self.processes["worker"].send_signal(signal.SIGTERM)
        return self.processes["worker"].wait(timeout=timeout_s)

    @contextmanager
    def added_gpu_worker(self, gpu: str) -> Iterator[None]:
        """Run one more training worker, pinned to `gpu`, until the context ends (then it shuts down warm)."""
        name, worker = f"worker-gpu{gpu}", gpu_worker(self.settings, gpu)
        self.start(name, worker.command, worker.env)
        try:
            yield
        finally:
            stop_process_group(self.processes.pop(name))

    def restart_worker(self) -> None:
        """Start a fresh GPU worker."""
        _api, worker, _validator = stack_commands(self.settings, "127.0.0.1", self.port)
        self.start("worker", worker.command, worker.env)

    def stop(self) -> None:
        """Stop every process."""
        stop_process_groups(list(self.processes.values()))


class StackClient(httpx.Client):
    """An HTTP client of a running stack, which it can also reach to kill and restart the worker."""

    def __init__(self, stack: RunningStack, headers: dict[str, str]) -> None:
        super().__init__(base_url=stack.base_url, headers=headers, timeout=30)
        self.stack = stack


@contextmanager
def running_stack(env: dict[str, str], log_dir: Path, gpus: list[str] | None = None) -> Iterator[RunningStack]:
    """Start the API, a training worker (one per entry of `gpus`) and a validation worker with `env`; stop them
    all at the end. The first training worker is `worker`, the others `worker-<gpu>`."""
    stack = RunningStack(env, log_dir)
    api, *trainers, validator = stack_commands(stack.settings, "127.0.0.1", stack.port, gpus)
    stack.start("api", api.command)
    for n, trainer in enumerate(trainers):
        stack.start("worker" if n == 0 else f"worker-{trainer.name}", trainer.command, trainer.env)
    stack.start("validator", validator.command)
    try:
        wait_healthy(stack.base_url)
        yield stack
    finally:
        stack.stop()


def wait_for_end(client: httpx.Client, job_id: str, timeout_s: float = 300) -> dict[str, Any]:
    """Poll a job until it reaches a terminal status; return it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if job["status"] in TERMINAL:
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s}s")


def read_sse(client: httpx.Client, url: str, headers: dict[str, str] | None = None) -> list[tuple[str, str, Any]]:
    """Read a whole Server-Sent Events stream as (id, event, data) tuples."""
    out, current = [], {"id": "", "event": "message", "data": ""}
    with client.stream("GET", url, headers=headers or {}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                if current["id"] or current["data"]:  # a keep-alive comment is not an event
                    out.append((current["id"], current["event"], json.loads(current["data"] or "null")))
                current = {"id": "", "event": "message", "data": ""}
            elif not line.startswith(":"):
                field, _, value = line.partition(": ")
                current[field] = value
    return out


def _live_runners() -> Iterator[tuple[Path, list[bytes]]]:
    """Live (not zombie) `worker.runner` processes: their /proc entry and command-line words (split on NULs and
    spaces: a spare that took a job retitles itself into one string)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").split()
            status = (entry / "status").read_text()
        except OSError:
            continue
        if b"worker.runner" in args and "State:\tZ" not in status:
            yield entry, args


def spare_pids(data_dir: Path) -> list[int]:
    """Pids of live spare trainers (`worker.runner --spare`, not yet given a job) of the stack using `data_dir`."""
    needle = f"FTQ_DATA_DIR={data_dir}".encode()
    pids = []
    for entry, args in _live_runners():
        if b"--spare" not in args:
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in environ:
            pids.append(int(entry.name))
    return pids


def trainer_pids(job_id: str) -> list[int]:
    """Pids of live `worker.runner` processes training this job (started for it, or a spare that took it and
    retitled itself)."""
    return [int(entry.name) for entry, args in _live_runners() if job_id.encode() in args]


def wait_until(predicate: Callable[[], bool], timeout_s: float = 120, what: str = "condition") -> None:
    """Poll until `predicate()` holds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")
