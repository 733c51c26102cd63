"""A GPU box end to end, as a team runs it: `ftq up --gpus all` (embedded SQLite and broker, one training worker per
GPU), the tiny demo model, a job on 2 GPUs and the same job on 1, through the API. It checks on real GPUs what the
suite checks on the CPU (gloo): the ranks start over NCCL, both workers hold the 2-GPU job, and it trains what one
GPU trains. Prints each job's outcome, the workers while the 2-GPU job ran, the loss gap and the performance events.

    python3 bench/gpu_box.py --data-dir /tmp/ftq-box --steps 20
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ftq import demo  # noqa: E402
from shared.settings import apply_data_dir  # noqa: E402


def start_box(data_dir: Path, port: int, gpus: str) -> subprocess.Popen[bytes]:
    """`ftq up --gpus ...` in the background, its output in the data dir."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log = (data_dir / "ftq-up.log").open("wb")
    command = [sys.executable, "-m", "ftq.cli", "up", "--gpus", gpus, "--data-dir", str(data_dir), "--port", str(port)]
    return subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def wait_for(check: Any, what: str, box: subprocess.Popen[bytes], timeout_s: float = 300) -> Any:
    """Poll `check()` until it returns something truthy; fail at once if the box has exited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if box.poll() is not None:
            raise RuntimeError(f"ftq up exited with {box.returncode} while waiting for {what}")
        try:
            value = check()
        except (httpx.HTTPError, OSError):
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"timed out waiting for {what}")


def main() -> int:
    """Run the box, the two jobs, and print what they did."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/ftq-box"))
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--gpus", default="all", help="`ftq up --gpus` (0,1 tries it on a CPU box)")
    parser.add_argument("--out", type=Path, help="JSON result file")
    args = parser.parse_args()

    box = start_box(args.data_dir, args.port, args.gpus)
    base = f"http://127.0.0.1:{args.port}"
    try:
        key = wait_for(lambda: (args.data_dir / "admin.key").read_text().strip(), "the admin key", box)
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        wait_for(lambda: client.get("/healthz").status_code == 200, "the API", box)
        gpu_workers = wait_for(
            lambda: len(training_workers(client)) >= 2 and training_workers(client), "2 workers", box
        )
        print(f"training workers: {json.dumps(gpu_workers)}", flush=True)

        model, rows = demo.prepare_demo_files(apply_data_dir(args.data_dir))
        spec = demo.demo_spec(model, rows)
        spec["hyperparameters"] |= {"max_steps": args.steps, "logging_steps": 1, "save_steps": args.steps // 2}
        spec["dataset"].pop("max_rows", None)
        jobs: dict[int, str] = {}
        for gpus in (2, 1):
            response = client.post("/jobs", json={**spec, "resources": {"gpus": gpus}})
            if response.status_code != 201:
                print(f"POST /jobs ({gpus} GPUs): {response.status_code} {response.text}", flush=True)
                return 1
            jobs[gpus] = response.json()["id"]
        running = wait_for(lambda: holding(client, jobs[2]), "both workers holding the 2-GPU job", box)
        print(f"while the 2-GPU job ran: {json.dumps(running)}", flush=True)
        ended = {gpus: follow(key, base, job_id, box) for gpus, job_id in jobs.items()}
        result = report(client, jobs, ended)
        if args.out:
            args.out.write_text(json.dumps(result, indent=1) + "\n")
        return 0 if all(j["status"] == "succeeded" for j in ended.values()) else 1
    finally:
        box.terminate()
        box.wait(60)
        print((args.data_dir / "ftq-up.log").read_text()[-3000:], flush=True)


def training_workers(client: httpx.Client) -> dict[str, Any]:
    """Each training worker's current job id (None when idle), by worker name."""
    workers = client.get("/workers").json()["data"]
    return {w["name"]: (w["current_job"] or {}).get("id") for w in workers if w["kind"] == "gpu"}


def holding(client: httpx.Client, job_id: str) -> dict[str, Any] | None:
    """The training workers, once two of them hold the job."""
    workers = training_workers(client)
    return workers if list(workers.values()).count(job_id) == 2 else None


def follow(key: str, base: str, job_id: str, box: subprocess.Popen[bytes], timeout_s: float = 300) -> dict[str, Any]:
    """Follow a job to its end as `ftq up --demo` does (a line per change); fail if the box exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    final = demo.follow(base, key, job_id, lambda: box.poll() is not None or time.monotonic() > deadline)
    if final is None:
        raise RuntimeError(f"job {job_id} did not end (ftq up exit code: {box.poll()})")
    return final


def report(client: httpx.Client, jobs: dict[int, str], ended: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Print and return each job's outcome, its performance and attempt messages, and the loss gap."""
    result: dict[str, Any] = {"jobs": {}}
    losses: dict[int, list[float]] = {}
    for gpus, job_id in jobs.items():
        events = client.get(f"/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
        losses[gpus] = [e["data"]["loss"] for e in events if e["type"] == "progress"]
        messages = [e["message"] for e in events if e["type"] != "progress"]
        print(f"\n{gpus} GPU(s): {demo.describe(ended[gpus])}", flush=True)
        for message in messages:
            print(f"  {message}", flush=True)
        result["jobs"][gpus] = {"job": ended[gpus], "losses": losses[gpus], "messages": messages}
    pairs = list(zip(losses[1], losses[2], strict=False))
    gap = max((abs(a - b) for a, b in pairs), default=None)
    result["max_loss_gap"] = gap
    print(f"\nlosses compared at {len(pairs)} steps, largest gap {gap}", flush=True)
    return result


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
