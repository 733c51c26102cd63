"""The demo of `make run`: a tiny local model built from the bundled pricer rows, and a job that trains it."""

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from shared.settings import Settings

REPO = Path(__file__).resolve().parent.parent
DEMO_ROWS = REPO / "examples" / "data" / "pricer-400.jsonl"
DEMO_SPEC = REPO / "examples" / "pricer-tiny.yaml"
TERMINAL = {"succeeded", "failed", "cancelled"}


def prepare_demo_files(settings: Settings) -> tuple[Path, Path]:
    """Copy the bundled rows and build the tiny model under the first allowed root (once)."""
    root = settings.allowed_roots[0]
    rows = root / "data" / DEMO_ROWS.name
    model = root / "models" / "tiny-llama"
    rows.parent.mkdir(parents=True, exist_ok=True)
    if not rows.exists():
        shutil.copyfile(DEMO_ROWS, rows)
    if not (model / "config.json").exists():
        # A separate process: the CLI itself never imports torch.
        subprocess.run([sys.executable, "-m", "worker.tiny_model", str(rows), str(model)], check=True)
    return model, rows


def demo_spec(model: Path, rows: Path) -> dict[str, Any]:
    """`examples/pricer-tiny.yaml` (the course's recipe at toy scale), pointed at the model and rows just built
    (the file's own relative paths assume the default data dir `.ftq-data`)."""
    spec = yaml.safe_load(DEMO_SPEC.read_text())
    spec["base_model"] = str(model)
    spec["dataset"]["id"] = str(rows)
    return dict(spec)


def submit(base_url: str, api_key: str, spec: dict[str, Any]) -> dict[str, Any]:
    """POST a spec and return the created job."""
    response = httpx.post(f"{base_url}/jobs", json=spec, headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
    response.raise_for_status()
    job: dict[str, Any] = response.json()
    return job


def follow(
    base_url: str, api_key: str, job_id: str, stopping: Callable[[], bool], poll_s: float = 1.0
) -> dict[str, Any] | None:
    """Print a line per change of the job until it ends (return it) or until `stopping()` (return None)."""
    last = ""
    while not stopping():
        job: dict[str, Any] = httpx.get(
            f"{base_url}/jobs/{job_id}", headers={"Authorization": f"Bearer {api_key}"}, timeout=30
        ).json()
        line = describe(job)
        if line != last:
            print(line, flush=True)
            last = line
        if job["status"] in TERMINAL:
            return job
        time.sleep(poll_s)
    return None


def describe(job: dict[str, Any]) -> str:
    """One line on a job: status, step/total, loss, tokens/s."""
    progress = job.get("progress") or {}
    parts = [f"{job['id']} {job['status']}"]
    if progress.get("total_steps"):
        parts.append(f"step {progress['step']}/{progress['total_steps']}")
    if progress.get("loss") is not None:
        parts.append(f"loss {progress['loss']:.4f}")
    if progress.get("tokens_per_second"):
        parts.append(f"{progress['tokens_per_second']:.0f} tok/s")
    if job.get("error"):
        parts.append(f"error {job['error']['code']}: {job['error']['message']}")
    return "  ".join(parts)


def write_spec(path: Path, spec: dict[str, Any]) -> None:
    """Save the demo spec for the README's curl example."""
    path.write_text(json.dumps(spec, indent=2) + "\n")
