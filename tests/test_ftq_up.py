"""`ftq up` on a laptop: embedded SQLite database and broker, admin key on first start, clean stop."""

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.services import OFFLINE, free_port, stop_process_group, wait_for_end, wait_healthy

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


def start_up(data_dir: Path, port: int, local_root: Path, log: Path) -> subprocess.Popen[bytes]:
    """Run `ftq up` with no DATABASE_URL or BROKER_URL, as on a laptop; its output goes to `log`."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BROKER_URL", "FTQ_QUEUE")}
    env.update(OFFLINE, FTQ_LOCAL_ROOTS=str(local_root), FTQ_PROGRESS_INTERVAL="0.2")
    command = [sys.executable, "-m", "ftq.cli", "up", "--data-dir", str(data_dir), "--port", str(port)]
    with open(log, "wb") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def test_ftq_up_runs_a_job_on_embedded_parts_and_stops_every_child(
    tmp_path: Path, local_root: Path, tiny_model: Path, train_file: Path
) -> None:
    data_dir, port = tmp_path / "ftq-data", free_port()
    log = tmp_path / "up.log"
    up = start_up(data_dir, port, local_root, log)
    try:
        wait_healthy(f"http://127.0.0.1:{port}")
        key_file = data_dir / "admin.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_text().strip()
        spec = {
            "base_model": str(tiny_model),
            "dataset": {"id": str(train_file)},
            "hyperparameters": {"batch_size": 4, "max_steps": 2, "max_length": 320},
        }
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}) as client:
            created = client.post("/jobs", json=spec)
            assert created.status_code == 201, created.text
            job = wait_for_end(client, created.json()["id"])
        assert job["status"] == "succeeded", job["error"]
        assert (data_dir / "ftq.db").exists() and (data_dir / "broker.db").exists()
        assert processes_with_data_dir(data_dir), "the API and worker run as children"

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
