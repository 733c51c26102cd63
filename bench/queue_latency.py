"""Time from `POST /jobs` to `running` on an idle stack (PostgreSQL, Redis, the API, a validation worker and a
training worker, as `ftq up` starts them): validation, the Redis hop and the claim; then from `running` to the
first step's progress event: the trainer's imports (none when a spare trainer took the job), loading the model and
rows, and the step itself.

    .venv/bin/python bench/queue_latency.py --jobs 5 --gap 15

Each job is a one-step job on the tiny local model; the next is submitted `--gap` seconds after the last one ended,
so every job finds the workers idle. Times come from the job's own timestamps and events (the database's clock).
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
REDIS_URL = os.environ.get("FTQ_BENCH_REDIS", "redis://127.0.0.1:6379/0")


def seconds(later: str, earlier: str) -> float:
    """Seconds between two ISO timestamps."""
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


def main() -> int:
    """Start a stack, time N jobs from POST to running, stop everything."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--gap", type=float, default=3.0, help="seconds between a job's end and the next POST")
    args = parser.parse_args()

    import httpx
    import redis

    from bench.api_load import create_database, drop_database, make_key
    from ftq.stack import Stack, stack_commands
    from shared.settings import Settings
    from worker.tiny_model import build_tiny_llama

    work = Path(tempfile.mkdtemp(prefix="ftq-queue-latency-"))
    rows = work / "pricer-400.jsonl"  # under the allowed root
    shutil.copyfile(REPO / "examples" / "data" / "pricer-400.jsonl", rows)
    model = build_tiny_llama(rows, work / "tiny-llama")
    url = create_database()
    key, _owner = make_key(url)
    queue = f"ftq-bench-{uuid.uuid4().hex[:8]}"
    port = 17000 + int(uuid.uuid4().int % 1000)
    env = {
        "DATABASE_URL": url,
        "BROKER_URL": REDIS_URL,
        "FTQ_QUEUE": queue,
        "FTQ_VALIDATE_QUEUE": f"{queue}-validate",
        "FTQ_LOCAL_ROOTS": str(work),
        "FTQ_DATA_DIR": str(work / "data"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    os.environ.update(env)
    stack = Stack(stack_commands(Settings(), "127.0.0.1", port, None), env=dict(os.environ))
    spec = {
        "base_model": str(model),
        "dataset": {"id": str(rows), "max_rows": 64},
        "hyperparameters": {"batch_size": 4, "max_length": 320, "max_steps": 1, "logging_steps": 1},
    }
    jobs_dir = Settings().jobs_dir
    results = []
    try:
        stack.start()
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            for _ in range(200):
                try:
                    client.get("/healthz").raise_for_status()
                    break
                except httpx.HTTPError:
                    time.sleep(0.2)
            time.sleep(5)  # let both workers finish starting: the bench measures idle workers, not cold ones
            for n in range(args.jobs + 1):  # the first job warms the workers' imports and is not counted
                time.sleep(args.gap)  # the last job's trainer exits after its outcome is written: let it go
                # A row count of its own, so validation cannot reuse an earlier job's cached tokenization.
                created = client.post("/jobs", json={**spec, "dataset": {**spec["dataset"], "max_rows": 64 + n}})
                if created.status_code != 201:
                    raise RuntimeError(f"the job was refused: {created.text}")
                job = created.json()
                while job["status"] not in ("succeeded", "failed", "cancelled"):
                    time.sleep(0.2)
                    job = client.get(f"/jobs/{job['id']}").json()
                events = client.get(f"/jobs/{job['id']}/events").json()["data"]
                queued = next(
                    e["created_at"] for e in events if e["type"] == "status" and e["data"].get("status") == "queued"
                )
                first_step = next(e["created_at"] for e in events if e["type"] == "progress")
                row = {
                    "job": job["id"],
                    "status": job["status"],
                    "post_to_queued_s": round(seconds(queued, job["created_at"]), 3),
                    "queued_to_running_s": round(seconds(job["started_at"], queued), 3),
                    "post_to_running_s": round(seconds(job["started_at"], job["created_at"]), 3),
                    "running_to_first_step_s": round(seconds(first_step, job["started_at"]), 3),
                    "spare": "taken by spare trainer" in (jobs_dir / job["id"] / "attempt-1.log").read_text(),
                }
                if n:
                    results.append(row)
                print(json.dumps({**row, "warm_up": n == 0}), flush=True)
    finally:
        stack.stop()
        redis.Redis.from_url(REDIS_URL).delete(queue, f"{queue}-validate")
        drop_database(url)

    for name in ("post_to_queued_s", "queued_to_running_s", "post_to_running_s", "running_to_first_step_s"):
        values = [r[name] for r in results]
        print(f"{name}: median {statistics.median(values):.3f} s, max {max(values):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
