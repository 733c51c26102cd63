"""The Python client of the ftq API (httpx), typed with the API's own pydantic models.

    from ftq import Client

    with Client() as ftq:  # FTQ_URL / FTQ_API_KEY, or ~/.config/ftq/config.toml
        job = ftq.jobs.create("examples/pricer-tiny.yaml")
        job = ftq.jobs.wait(job.id)

Errors the API answers are raised as `APIError`, carrying the HTTP status and the envelope's `code`,
`message` and `param`.
"""

import builtins
import json
import os
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml
from pydantic import BaseModel

from api.schemas import (
    CheckpointList,
    CheckpointRead,
    DryRun,
    EventList,
    EventRead,
    FileList,
    FileRead,
    JobList,
    JobRead,
)
from api.schemas_team import MeRead, WorkerList, WorkerRead
from shared.spec import JobSpec, is_job_id

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = ("succeeded", "failed", "cancelled")
Model = TypeVar("Model", bound=BaseModel)


class APIError(Exception):
    """An error answer of the API: its HTTP status and the envelope's code, message and field at fault."""

    def __init__(self, status_code: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(f"{status_code} {code}: {message}" + (f" (param: {param})" if param else ""))
        self.status_code = status_code
        self.code = code
        self.message = message
        self.param = param

    @classmethod
    def from_response(cls, response: httpx.Response) -> "APIError":
        """Read the error envelope (or make one up for an answer that has none, such as a proxy's 502)."""
        try:
            error = response.json()["error"]
            return cls(response.status_code, error["code"], error["message"], error.get("param"))
        except (ValueError, KeyError, TypeError):
            return cls(response.status_code, "http_error", response.text[:500] or response.reason_phrase)


def config_path() -> Path:
    """`$XDG_CONFIG_HOME/ftq/config.toml`, by default `~/.config/ftq/config.toml`."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "ftq" / "config.toml"


def resolve_config(base_url: str | None, api_key: str | None) -> tuple[str, str | None]:
    """Arguments first, then `FTQ_URL` / `FTQ_API_KEY`, then `url` / `api_key` in the config file."""
    file: dict[str, Any] = {}
    path = config_path()
    if path.exists():
        file = tomllib.loads(path.read_text())
    url = base_url or os.environ.get("FTQ_URL") or file.get("url") or DEFAULT_URL
    key = api_key or os.environ.get("FTQ_API_KEY") or file.get("api_key")
    return str(url).rstrip("/"), key


def load_spec(spec: JobSpec | dict[str, Any] | str | Path) -> dict[str, Any]:
    """A spec as the request body: a JobSpec, a dict, or the path of a .yaml/.yml/.json file.

    In a file, a `base_model`, `adapter`, `dataset.id` or `evaluation.dataset.id` starting with `./` or `../` is
    relative to the file: it is sent as an absolute path (the server only reads absolute paths under its allowed
    roots).
    """
    if isinstance(spec, JobSpec):
        return spec.model_dump(mode="json", exclude_unset=True)
    if isinstance(spec, dict):
        return spec
    path = Path(spec)
    text = path.read_text()
    loaded = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} does not hold a spec (a mapping at the top level)")
    return _absolute_paths(loaded, path.resolve().parent)


def _absolute_paths(spec: dict[str, Any], base: Path) -> dict[str, Any]:
    def absolute(ref: Any) -> Any:
        if isinstance(ref, str) and ref.startswith(("./", "../")):
            return str((base / ref).resolve())
        return ref

    def with_absolute_dataset(section: Any) -> Any:
        if isinstance(section, dict) and isinstance(section.get("dataset"), dict):
            return {**section, "dataset": {**section["dataset"], "id": absolute(section["dataset"].get("id"))}}
        return section

    spec = with_absolute_dataset(dict(spec))
    for name in ("base_model", "adapter"):
        if name in spec:
            spec[name] = absolute(spec[name])
    if "evaluation" in spec:
        spec["evaluation"] = with_absolute_dataset(spec["evaluation"])
    return spec


class Client:
    """A client of one ftq API with one API key."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url, key = resolve_config(base_url, api_key)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)
        self.jobs = Jobs(self)
        self.files = Files(self)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request; an error answer raises APIError."""
        response = self.http.request(method, path, **kwargs)
        if response.is_error:
            raise APIError.from_response(response)
        return response

    def parse(self, model: type[Model], method: str, path: str, **kwargs: Any) -> Model:
        """Send a request and read the answer as `model`."""
        return model.model_validate_json(self.request(method, path, **kwargs).content)

    def me(self) -> MeRead:
        """Who the API key belongs to, their limits and which tokens they stored."""
        return self.parse(MeRead, "GET", "/me")

    def workers(self) -> list[WorkerRead]:
        """Every worker, its GPU, state and current job."""
        return self.parse(WorkerList, "GET", "/workers").data


class Jobs:
    """`client.jobs`: create, read, list, cancel, follow and download jobs."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def create(
        self,
        spec: JobSpec | dict[str, Any] | str | Path,
        *,
        idempotency_key: str | None = None,
    ) -> JobRead:
        """Submit a job from a spec (or the path of a YAML/JSON spec file); an `idempotency_key` makes a retry
        return the job the first request created."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self.client.parse(JobRead, "POST", "/jobs", json=load_spec(spec), headers=headers)

    def evaluate(
        self,
        dataset: str | dict[str, Any],
        *,
        adapter: str | None = None,
        base_model: str | None = None,
        idempotency_key: str | None = None,
        **evaluation: Any,
    ) -> JobRead:
        """Score an adapter (a fine-tune job's id, a local directory or a Hub id) or, without one, `base_model` on a
        dataset, without training: a job of kind `evaluation`. With a job id the base model and quantization
        default to that job's. `evaluation` takes the evaluation block's settings (metric, baseline, ...)."""
        return self.create(
            self.evaluation_spec(dataset, adapter=adapter, base_model=base_model, **evaluation),
            idempotency_key=idempotency_key,
        )

    def evaluation_spec(
        self,
        dataset: str | dict[str, Any],
        *,
        adapter: str | None = None,
        base_model: str | None = None,
        **evaluation: Any,
    ) -> dict[str, Any]:
        """The spec `evaluate` submits (local paths made absolute; a job id's base model filled in)."""
        spec: dict[str, Any] = {"kind": "evaluation"}
        if adapter is not None and is_job_id(adapter):
            trained = self.get(adapter).spec
            spec.update(base_model=trained.base_model, quantization=trained.quantization.model_dump(mode="json"))
        if base_model is not None:
            spec["base_model"] = base_model
        if "base_model" not in spec:
            raise ValueError("name the base model (or an adapter that is an ftq job id)")
        if adapter is not None:
            spec["adapter"] = adapter
        data = {"id": dataset} if isinstance(dataset, str) else dataset
        spec["evaluation"] = {"dataset": data, **{k: v for k, v in evaluation.items() if v is not None}}
        return _absolute_paths(spec, Path.cwd())

    def dry_run(self, spec: JobSpec | dict[str, Any] | str | Path) -> DryRun:
        """Validate a spec and plan it (stats, planned steps) without storing anything."""
        return self.client.parse(DryRun, "POST", "/jobs", params={"dry_run": "true"}, json=load_spec(spec))

    def get(self, job_id: str) -> JobRead:
        """One job."""
        return self.client.parse(JobRead, "GET", f"/jobs/{job_id}")

    def list(self, *, status: str | None = None, page_size: int = 100) -> Iterator[JobRead]:
        """Every job visible to the key, newest first, fetching page after page as it is iterated."""
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if status:
                params["status"] = status
            if after:
                params["after"] = after
            page = self.client.parse(JobList, "GET", "/jobs", params=params)
            yield from page.data
            if not page.has_more or not page.data:
                return
            after = page.data[-1].id

    def cancel(self, job_id: str) -> JobRead:
        """Cancel a job (a running one stops at its next step)."""
        return self.client.parse(JobRead, "POST", f"/jobs/{job_id}/cancel")

    def events(self, job_id: str, *, stream: bool = False, after: int | None = None) -> Iterator[EventRead]:
        """A job's events, oldest first: those so far, or with `stream=True` live until the job ends."""
        if stream:
            yield from self._stream(job_id, after)
            return
        while True:
            params: dict[str, Any] = {"limit": 1000} | ({"after": after} if after is not None else {})
            page = self.client.parse(EventList, "GET", f"/jobs/{job_id}/events", params=params)
            yield from page.data
            if not page.has_more or not page.data:
                return
            after = page.data[-1].id

    def _stream(self, job_id: str, after: int | None) -> Iterator[EventRead]:
        """Follow the Server-Sent Events stream, reconnecting after the last event seen if it drops."""
        last = after
        while True:
            headers = {"Last-Event-ID": str(last)} if last is not None else {}
            try:
                with self.client.http.stream(
                    "GET", f"/jobs/{job_id}/events/stream", headers=headers, timeout=httpx.Timeout(30, read=None)
                ) as response:
                    if response.is_error:
                        response.read()
                        raise APIError.from_response(response)
                    for kind, data in _sse_frames(response.iter_lines()):
                        if kind == "end":
                            return
                        event = EventRead.model_validate_json(data)
                        last = event.id
                        yield event
            except httpx.TransportError:
                time.sleep(1.0)  # the API restarted or the network blinked: resume after the last event

    def wait(
        self,
        job_id: str,
        *,
        poll_s: float = 1.0,
        timeout_s: float | None = None,
        on_update: Callable[[JobRead], None] | None = None,
    ) -> JobRead:
        """Poll a job until it ends (succeeded, failed or cancelled) and return it; TimeoutError after `timeout_s`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.get(job_id)
            if on_update is not None:
                on_update(job)
            if job.status.value in TERMINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status.value} after {timeout_s}s")
            time.sleep(poll_s)

    def checkpoints(self, job_id: str) -> builtins.list[CheckpointRead]:
        """A job's complete checkpoints, by step."""
        return self.client.parse(CheckpointList, "GET", f"/jobs/{job_id}/checkpoints").data

    def download(self, job_id: str, destination: str | Path | None = None, *, step: int | None = None) -> Path:
        """Save the final adapter (or the checkpoint at `step`) as a .tar.gz; returns the file written."""
        path = f"/jobs/{job_id}/checkpoints/{step}/download" if step is not None else f"/jobs/{job_id}/adapter/download"
        name = f"{job_id}-step-{step}.tar.gz" if step is not None else f"{job_id}-adapter.tar.gz"
        target = Path(destination) if destination is not None else Path(name)
        if target.is_dir():
            target = target / name
        partial = target.with_name(target.name + ".part")
        with self.client.http.stream("GET", path) as response:
            if response.is_error:
                response.read()
                raise APIError.from_response(response)
            with open(partial, "wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
        partial.replace(target)  # never leave half a file under the final name
        return target


class Files:
    """`client.files`: dataset uploads."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def upload(self, path: str | Path) -> FileRead:
        """Upload a .jsonl, .csv or .parquet dataset; use the returned id as `dataset.id` in a spec."""
        path = Path(path)
        with open(path, "rb") as handle:
            return self.client.parse(FileRead, "POST", "/files", files={"file": (path.name, handle)})

    def list(self) -> builtins.list[FileRead]:
        """The key's uploaded files, newest first."""
        return self.client.parse(FileList, "GET", "/files").data

    def get(self, file_id: str) -> FileRead:
        """One uploaded file."""
        return self.client.parse(FileRead, "GET", f"/files/{file_id}")

    def delete(self, file_id: str) -> None:
        """Delete an uploaded file."""
        self.client.request("DELETE", f"/files/{file_id}")


def _sse_frames(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) of each Server-Sent Events frame; comments (keep-alives) are skipped."""
    kind, data = "message", ""
    for line in lines:
        if not line:
            if data:
                yield kind, data
            kind, data = "message", ""
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                kind = value
            elif field == "data":
                data = f"{data}\n{value}" if data else value
    if data:
        yield kind, data
