"""API and queue latency: the real API (one uvicorn process) on PostgreSQL and Redis, loaded from a second process
on 127.0.0.1, beside a trivial FastAPI endpoint served the same way as the ceiling (async; also as a sync `def`, the
ceiling of earlier runs), and the async one with one round trip to PostgreSQL added.

    .venv/bin/python bench/api_load.py                      # 1k then 100k jobs, 32 clients, 8 s per endpoint
    .venv/bin/python bench/api_load.py --jobs 20000 --duration 4

It makes a throwaway PostgreSQL database and Redis queue names of its own, seeds jobs straight into the table
(mostly finished, a few queued, as on a team's box), measures `GET /jobs/{id}`, `GET /jobs` (first page and a deep
keyset page) at 1k jobs and again at the full count (`GET /jobs/{id}` over 5,000 of them, then the same again),
`GET /jobs/{id}` of 8 jobs whose progress is written 80 times a second meanwhile (polls that follow changes), and
`POST /jobs` (which commits the job and publishes its message to Redis), then drops what it made. Prints a table and
writes JSON to --out.
"""

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
POSTGRES_ADMIN = os.environ.get("FTQ_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("FTQ_BENCH_REDIS", "redis://127.0.0.1:6379/0")
TRIVIAL_APP = "bench.trivial_app:app"
CEILING = "trivial FastAPI endpoint (ceiling)"  # async def; the fastest trivial endpoint is the ceiling
SYNC_TRIVIAL = "trivial FastAPI endpoint, sync def"
REPEAT_POLLS = "GET /jobs/{id}, the same 5,000 jobs polled again"
RUNNING_POLLS = "GET /jobs/{id}, 8 running jobs updated 80 times a second in all"


def create_database() -> str:
    """A fresh PostgreSQL database, migrated; its SQLAlchemy URL."""
    import psycopg

    from shared.migrate import upgrade_database

    name = f"ftq_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    upgrade_database(url)
    return url


def drop_database(url: str) -> None:
    """Drop the bench's database."""
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_key(url: str) -> tuple[str, str]:
    """An API key and its user's id."""
    from shared.auth import create_api_key
    from shared.db import session_scope

    with session_scope(url) as session:
        key, raw = create_api_key(session=session, name="bench")
        session.commit()
        return raw, key.user_id


def seed_jobs(url: str, owner_id: str, count: int, spec: dict[str, Any], start: int) -> list[str]:
    """Insert `count` jobs in bulk (98% succeeded, the rest failed, cancelled or queued), each with its spec as the
    API stores it (every field resolved) and a succeeded job's result; their ids."""
    from sqlalchemy import insert

    from shared.db import session_scope
    from shared.models import Job, JobStatus
    from shared.spec import JobSpec

    stored_spec = JobSpec.model_validate(spec).model_dump(mode="json")
    result = {"adapter_path": "/srv/ftq/adapters/ftjob-0/final", "trainable_params": 27262976}
    result |= {"total_params": 8057524224, "quantization": {"bits": 4, "quant_type": "nf4", "double_quant": True}}

    now = datetime.now(UTC)
    statuses = [JobStatus.succeeded] * 98 + [JobStatus.failed, JobStatus.cancelled]
    ids = []
    with session_scope(url) as session:
        batch: list[dict[str, Any]] = []
        for n in range(start, start + count):
            job_id = f"ftjob-{uuid.uuid4().hex[:24]}"
            ids.append(job_id)
            status = JobStatus.queued if n % 5000 == 0 else statuses[n % len(statuses)]
            batch.append(
                {
                    "id": job_id,
                    "owner_id": owner_id,
                    "status": status,
                    "spec": stored_spec,
                    "metadata": {},
                    "progress": {"step": 10, "total_steps": 10, "loss": 1.5},
                    "stats": {"rows": 160},
                    "result": result if status is JobStatus.succeeded else {},
                    "attempt": 1,
                    "priority": 0,
                    "created_at": now - timedelta(seconds=(start + count - n)),
                }
            )
            if len(batch) == 5000:
                session.execute(insert(Job), batch)
                batch = []
        if batch:
            session.execute(insert(Job), batch)
        session.commit()
    return ids


def analyze(url: str) -> None:
    """VACUUM ANALYZE the jobs table."""
    import psycopg

    from shared.db import libpq_url

    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE jobs")


@contextmanager
def progress_writer(url: str, job_ids: list[str], per_s: float) -> Iterator[dict[str, float]]:
    """Mark the jobs running and, meanwhile, update their progress `per_s` times a second in all (round robin), as
    their workers would; yields a dict that holds the updates made a second, once done."""
    import psycopg

    from shared.db import libpq_url

    done = threading.Event()
    made = {"updates_per_s": 0.0}

    def write() -> None:
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            conn.execute("UPDATE jobs SET status = 'running' WHERE id = ANY(%s)", (job_ids,))
            began, step = time.perf_counter(), 0
            while not done.wait(max(0.0, began + step / per_s - time.perf_counter())):
                progress = json.dumps({"step": step, "total_steps": 1_000_000, "loss": 1.5})
                conn.execute("UPDATE jobs SET progress = %s WHERE id = %s", (progress, job_ids[step % len(job_ids)]))
                step += 1
            made["updates_per_s"] = round(step / (time.perf_counter() - began), 1)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        yield made
    finally:
        done.set()
        thread.join()


def start_server(app: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """One uvicorn process serving `app`."""
    command = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    command += ["--log-level", "warning"]
    return subprocess.Popen(command, env=env, cwd=REPO)


def wait_up(url: str) -> None:
    """Wait until a server answers."""
    import httpx

    for _ in range(200):
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError(url)


def drive(base_url: str, key: str, plan: dict[str, Any]) -> dict[str, Any]:
    """Run one load phase in a second process (`--drive`), returning its figures."""
    out = subprocess.run(
        [sys.executable, __file__, "--drive"],
        input=json.dumps({"base_url": base_url, "key": key, **plan}),
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


class RawConnection:
    """One keep-alive HTTP/1.1 connection over asyncio streams: requests written by hand and responses read by their
    Content-Length. It costs the load process a few times less CPU per request than httpx, which on a box whose
    cores the server shares leaves more of them to the server (`--client raw`)."""

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host, self.port = host, port
        self.head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"{host}:{port}", **headers}.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> int:
        """Send one request and read its whole response; the status code."""
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        extra = f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n" if body else ""
        self.writer.write(f"{method} {path} HTTP/1.1\r\n{self.head}{extra}\r\n".encode() + body)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return int(status_line.split()[1])


Send = Callable[[], Awaitable[int]]


async def _load(plan: dict[str, Any]) -> dict[str, Any]:
    """One phase from this process: `concurrency` clients, each sending the plan's request in a loop."""
    headers = {"Authorization": f"Bearer {plan['key']}"}
    rng = random.Random(0)

    def path() -> str:
        return str(plan["path"]).replace("{id}", rng.choice(plan.get("ids") or [""]))

    if plan.get("client") == "raw":
        target = urlsplit(plan["base_url"])
        body = json.dumps(plan["body"]).encode() if plan["method"] == "POST" else b""
        query = f"?{urlencode(plan['params'])}" if plan.get("params") else ""
        connections = [
            RawConnection(target.hostname or "", target.port or 80, headers) for _ in range(plan["concurrency"])
        ]

        def raw_sender(connection: RawConnection) -> Send:
            async def send() -> int:
                return await connection.request(plan["method"], path() + query, body)

            return send

        return await measure([raw_sender(c) for c in connections], plan)

    import httpx

    limits = httpx.Limits(max_connections=plan["concurrency"], max_keepalive_connections=plan["concurrency"])
    async with httpx.AsyncClient(base_url=plan["base_url"], headers=headers, limits=limits, timeout=30) as client:

        async def send() -> int:
            if plan["method"] == "POST":
                return (await client.post(plan["path"], json=plan["body"])).status_code
            return (await client.get(path(), params=plan.get("params"))).status_code

        return await measure([send] * plan["concurrency"], plan)


async def measure(senders: list[Send], plan: dict[str, Any]) -> dict[str, Any]:
    """Run each sender in a loop, one client each: a second to warm up, then `duration` seconds timed. Requests,
    errors, requests/s, p50 and p99 of the timed part."""
    latencies: list[float] = []
    errors = 0

    async def client(send: Send, deadline: float) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            status = await send()
            latencies.append(time.perf_counter() - started)
            errors += status >= 400

    warm_until = time.perf_counter() + 1.0
    await asyncio.gather(*(client(send, warm_until) for send in senders))
    latencies.clear()
    errors = 0
    began = time.perf_counter()
    await asyncio.gather(*(client(send, began + plan["duration"]) for send in senders))
    elapsed = time.perf_counter() - began
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "errors": errors,
        "rps": round(len(ordered) / elapsed, 1),
        "p50_ms": round(1000 * statistics.median(ordered), 2),
        "p99_ms": round(1000 * ordered[int(0.99 * (len(ordered) - 1))], 2),
    }


def main() -> int:
    """Seed, serve, load, report, clean up."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument(
        "--client",
        choices=["httpx", "raw"],
        default="httpx",
        help="the load's HTTP client (raw: hand-written HTTP/1.1)",
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / "bench" / "results" / f"{datetime.now(UTC):%Y-%m-%d}-api-load.json"
    )
    parser.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)  # the load process; plan on stdin
    args = parser.parse_args()
    if args.drive:
        print(json.dumps(asyncio.run(_load(json.loads(sys.stdin.read())))))
        return 0

    import redis

    url = create_database()
    key, owner = make_key(url)
    queue = f"ftq-bench-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "BROKER_URL": REDIS_URL,
        "FTQ_QUEUE": queue,
        "FTQ_VALIDATE_QUEUE": f"{queue}-validate",
        "FTQ_RATE_LIMIT": "100000000",
        "FTQ_RATE_BURST": "100000000",
        "FTQ_LOCAL_ROOTS": str(REPO / "examples"),
        "FTQ_DATA_DIR": f"/tmp/{queue}",
    }
    spec = {"base_model": "meta-llama/Llama-3.1-8B", "dataset": {"id": "ed-donner/pricer-data"}}
    api_port, trivial_port = 18000 + random.randrange(1000), 19000 + random.randrange(1000)
    servers = [start_server("api.main:app", api_port, env), start_server(TRIVIAL_APP, trivial_port, env)]
    rows: list[dict[str, Any]] = []

    def phase(name: str, base: str, jobs: int, **plan: Any) -> None:
        measured = drive(
            base, key, {"concurrency": args.concurrency, "duration": args.duration, "client": args.client, **plan}
        )
        rows.append({"endpoint": name, "jobs": jobs, **measured})
        print(json.dumps(rows[-1]), flush=True)

    try:
        api, trivial = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{trivial_port}"
        wait_up(f"{api}/healthz")
        wait_up(f"{trivial}/ping")
        ids = seed_jobs(url, owner, 1000, spec, 0)
        phase(CEILING, trivial, 0, method="GET", path="/ping-async")
        phase(SYNC_TRIVIAL, trivial, 0, method="GET", path="/ping")
        phase("trivial endpoint + one PostgreSQL round trip", trivial, 0, method="GET", path="/ping-db")
        phase("GET /jobs/{id}", api, 1000, method="GET", path="/jobs/{id}", ids=ids)
        phase("GET /jobs (first page)", api, 1000, method="GET", path="/jobs")
        ids += seed_jobs(url, owner, args.jobs - 1000, spec, 1000)
        analyze(url)  # as autovacuum would soon: measure a settled table, not one being analyzed meanwhile
        deep = ids[len(ids) // 2]
        polled = random.sample(ids, min(5000, len(ids)))
        phase("GET /jobs/{id}", api, args.jobs, method="GET", path="/jobs/{id}", ids=polled)
        phase(REPEAT_POLLS, api, args.jobs, method="GET", path="/jobs/{id}", ids=polled)
        # What scripts poll most: jobs that are training, each writing its progress (here 10x a second, ten times
        # the default FTQ_PROGRESS_INTERVAL), so a poll often follows a change.
        running = ids[1:9]
        with progress_writer(url, running, per_s=80) as writes:
            phase(RUNNING_POLLS, api, args.jobs, method="GET", path="/jobs/{id}", ids=running)
        rows[-1].update(writes)
        phase("GET /jobs (first page)", api, args.jobs, method="GET", path="/jobs")
        phase("GET /jobs (a page in the middle)", api, args.jobs, method="GET", path="/jobs", params={"after": deep})
        phase("POST /jobs", api, args.jobs, method="POST", path="/jobs", body=spec)
        phase(CEILING, trivial, 0, method="GET", path="/ping-async")
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)
        client = redis.Redis.from_url(REDIS_URL)
        client.delete(queue, f"{queue}-validate")
        drop_database(url)

    ceiling = max(r["rps"] for r in rows if r["endpoint"] in (CEILING, SYNC_TRIVIAL))
    for row in rows:
        row["of_ceiling"] = round(row["rps"] / ceiling, 3)
    print(f"\n{os.cpu_count()} cores, {args.concurrency} clients ({args.client}), {args.duration:g} s per endpoint")
    print("| endpoint | jobs in table | req/s | p50 ms | p99 ms | of ceiling | errors |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['endpoint']} | {r['jobs']:,} | {r['rps']:,.0f} | {r['p50_ms']} | {r['p99_ms']} |"
            f" {r['of_ceiling']:.0%} | {r['errors']} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": datetime.now(UTC).isoformat(), "cores": os.cpu_count(), "concurrency": args.concurrency}
    meta["client"] = args.client
    args.out.write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
