"""`ftq up` on a laptop: embedded SQLite database and broker, admin key on first start, one pinned worker per GPU,
clean stop."""

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.services import (
    OFFLINE,
    TERMINAL,
    free_port,
    stop_process_group,
    trainer_pids,
    wait_for_end,
    wait_healthy,
    wait_until,
)

pytestmark = pytest.mark.training


def processes_with_data_dir(data_dir: Path) -> list[int]:
    """Pids of live processes whose environment points at this data dir."""
    needle = f"FTQ_DATA_DIR={data_dir}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                status = (entry / "status").read_text()
                if "State:\tZ" not in status:
                    pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def pool_processes(worker_pid: int) -> list[int]:
    """The pool processes a Celery worker forked (its children running Python, not the trainers they start)."""
    children = []
    for entry in Path("/proc").iterdir():
        try:
            stat_fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if int(stat_fields[1]) == worker_pid and b"celery" in cmdline:
            children.append(int(entry.name))
    return children


def has_torch_loaded(pid: int) -> bool:
    """Whether the process has torch's library mapped (it imported torch)."""
    try:
        return b"libtorch" in Path(f"/proc/{pid}/maps").read_bytes()
    except OSError:
        return False


def start_up(data_dir: Path, port: int, local_root: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """Run `ftq up ARGS` with no DATABASE_URL or BROKER_URL, as on a laptop; its output goes to `log`."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BROKER_URL", "FTQ_QUEUE")}
    env.update(OFFLINE, FTQ_LOCAL_ROOTS=str(local_root), FTQ_PROGRESS_INTERVAL="0.2", FTQ_WORKER_HEARTBEAT="1")
    command = [sys.executable, "-m", "ftq.cli", "up", "--data-dir", str(data_dir), "--port", str(port), *args]
    with open(log, "wb") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _visible_devices(pid: int) -> str | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    found = [v.split(b"=", 1)[1].decode() for v in environ if v.startswith(b"CUDA_VISIBLE_DEVICES=")]
    return found[0] if found else None


def test_ftq_up_runs_one_pinned_worker_per_gpu_on_embedded_parts_and_stops_every_child(
    tmp_path: Path, local_root: Path, tiny_model: Path, train_file: Path
) -> None:
    data_dir, port = tmp_path / "ftq-data", free_port()
    log = tmp_path / "up.log"
    up = start_up(data_dir, port, local_root, log, "--gpus", "0,1")
    spec = {
        "base_model": str(tiny_model),
        "dataset": {"id": str(train_file)},
        "hyperparameters": {"batch_size": 4, "max_steps": 4, "max_length": 320},
    }
    pinned: dict[str, set[str | None]] = {}
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_healthy(base_url)
        key_file = data_dir / "admin.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_text().strip()
        with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}) as client:

            def gpu_workers() -> list[dict[str, object]]:
                return [w for w in client.get("/workers").json()["data"] if w["kind"] == "gpu"]

            wait_until(lambda: sum(w["state"] == "online" for w in gpu_workers()) == 2, 60, "two GPU workers")
            workers = gpu_workers()
            validator = next(w for w in client.get("/workers").json()["data"] if w["kind"] == "validate")
            # Before any job: the validation worker's pool process imports its stack as it starts; the training
            # workers' stay free of torch (their trainers import it in their own processes).
            loaded = lambda: any(has_torch_loaded(p) for p in pool_processes(int(validator["pid"])))  # noqa: E731
            wait_until(loaded, 60, "the validation stack loaded before the first job")
            assert all(pool_processes(int(w["pid"])) for w in workers)
            assert not any(has_torch_loaded(p) for w in workers for p in pool_processes(int(w["pid"])))
            ids = [client.post("/jobs", json=spec).json()["id"] for _ in range(2)]
            # One list request a round, 5 rounds a second: under the API's rate limit (10 a second) however long
            # the jobs take on a busy box.
            while not all(job["status"] in TERMINAL for job in client.get("/jobs").raise_for_status().json()["data"]):
                for job_id in ids:
                    for pid in trainer_pids(job_id):
                        pinned.setdefault(job_id, set()).add(_visible_devices(pid))
                time.sleep(0.2)
            jobs = [wait_for_end(client, job_id) for job_id in ids]
        assert (data_dir / "ftq.db").exists() and (data_dir / "broker.db").exists(), "embedded database and broker"
        assert processes_with_data_dir(data_dir), "the API and workers run as children"
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=60)
    finally:
        stop_process_group(up)

    assert up.returncode == 0
    assert key in log.read_text(), "the first start prints the admin key"
    deadline = time.monotonic() + 10
    while processes_with_data_dir(data_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_with_data_dir(data_dir) == []

    assert sorted((str(w["name"]).split("@")[0], w["gpu"]) for w in workers) == [("gpu0", "0"), ("gpu1", "1")]
    assert [j["status"] for j in jobs] == ["succeeded", "succeeded"]
    assert {str(j["worker"]).split("@")[0] for j in jobs} == {"gpu0", "gpu1"}, "one job on each GPU worker"
    first, second = jobs
    assert first["started_at"] < second["finished_at"] and second["started_at"] < first["finished_at"], "at once"
    for job in jobs:
        gpu = str(job["worker"]).split("@")[0].removeprefix("gpu")
        assert pinned[job["id"]] == {gpu}, "each trainer sees only its worker's GPU"
