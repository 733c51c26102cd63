"""Submit a fine-tune job over plain HTTP and poll it to the end: the script a user would write without the
ftq client. Needs only httpx (and PyYAML for a .yaml spec).

    FTQ_URL=http://127.0.0.1:8000 FTQ_API_KEY=ftq_... python examples/submit_and_poll.py spec.json

Exit code: 0 when the job succeeded, 1 when it failed or was cancelled, 2 when the request was refused.
"""

import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

TERMINAL = {"succeeded", "failed", "cancelled"}


def read_spec(path: Path) -> dict[str, Any]:
    """A spec from a .json or .yaml file."""
    if path.suffix in (".yaml", ".yml"):
        import yaml

        spec: dict[str, Any] = yaml.safe_load(path.read_text())
        return spec
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def call(client: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request, waiting out 429 and 503 answers as their Retry-After says."""
    while True:
        response = client.request(method, url, **kwargs)
        if response.status_code not in (429, 503):
            return response
        time.sleep(float(response.headers.get("Retry-After", "5")))


def main() -> int:
    """Submit the spec named on the command line and print its progress until it ends."""
    base_url = os.environ.get("FTQ_URL", "http://127.0.0.1:8000")
    headers = {"Authorization": f"Bearer {os.environ['FTQ_API_KEY']}"}
    spec = read_spec(Path(sys.argv[1]))
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
        # The same Idempotency-Key on a retry returns the first job instead of creating a second one.
        created = call(client, "POST", "/jobs", json=spec, headers={"Idempotency-Key": str(uuid.uuid4())})
        if created.status_code != 201:
            error = created.json()["error"]
            print(f"refused ({created.status_code}): {error['code']} on {error['param']}: {error['message']}")
            return 2
        job = created.json()
        print(f"submitted {job['id']}")
        last = ""
        while job["status"] not in TERMINAL:
            time.sleep(2)
            job = call(client, "GET", f"/jobs/{job['id']}").json()
            progress = job["progress"]
            line = f"{job['status']} step {progress['step']}/{progress['total_steps']} loss {progress['loss']}"
            if line != last:
                print(line, flush=True)
                last = line
    if job["status"] == "succeeded":
        print(f"succeeded: adapter at {job['result']['adapter_path']}")
        return 0
    print(f"{job['status']}: {job['error']}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
