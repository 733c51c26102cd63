"""Pushes a job's checkpoints and final adapter to its Hugging Face Hub repo.

The token is the job owner's (handed in by the runner), else the team's (`HF_TOKEN` in the worker's environment,
read by `huggingface_hub` itself): it is never in the spec, the task arguments, the training arguments or a pushed
file. Checkpoint pushes run in the
background in order; each commit URL is reported as soon as its upload finishes.
"""

from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

from shared.artifacts import ADAPTER_FILE_PATTERNS
from shared.errors import JobFailure
from shared.spec import HubSpec


class HubReporter(Protocol):
    """Where the outcome of each push is recorded."""

    def hub_commit(self, step: int | None, url: str) -> None: ...

    def hub_failed(self, step: int | None, message: str) -> None: ...


class HubPublisher:
    """One job's pushes to one repo."""

    def __init__(self, spec: HubSpec, reporter: HubReporter, token: str | None = None) -> None:
        from huggingface_hub import HfApi

        self.spec = spec
        self.reporter = reporter
        self.api = HfApi(token=token)  # None: huggingface_hub reads HF_TOKEN
        self.pending: list[Future[Any]] = []

    def create_repo(self) -> str:
        """Create the repo (private unless the spec says otherwise), or find it; fail the job if we cannot."""
        try:
            url = self.api.create_repo(self.spec.repo_id, private=self.spec.private, exist_ok=True)
        except Exception as exc:
            raise JobFailure(
                f"cannot create or reach Hub repo {self.spec.repo_id!r}: {type(exc).__name__}: {exc}",
                code="hub_error",
                param="hub.repo_id",
            ) from exc
        return str(url)

    def push_checkpoint(self, step: int, folder: Path) -> None:
        """Upload a checkpoint's adapter in the background; its commit URL is reported when it lands."""
        future = self.api.upload_folder(
            repo_id=self.spec.repo_id,
            folder_path=str(folder),
            allow_patterns=list(ADAPTER_FILE_PATTERNS),
            commit_message=f"Training in progress, step {step}",
            run_as_future=True,
        )
        future.add_done_callback(lambda done: self._report(step, done))
        self.pending.append(future)

    def _report(self, step: int | None, done: Future[Any]) -> None:
        error = done.exception()
        if error is None:
            self.reporter.hub_commit(step, done.result().commit_url)
        else:
            self.reporter.hub_failed(step, f"{type(error).__name__}: {error}")

    def wait(self) -> None:
        """Wait for every checkpoint push still uploading."""
        for future in self.pending:
            future.exception()  # waits; failures were reported by the done callback

    def push_final(self, adapter_dir: Path) -> str:
        """Upload the final adapter, tokenizer and model card (README.md) once checkpoints landed; the commit URL."""
        self.wait()
        try:
            info = self.api.upload_folder(
                repo_id=self.spec.repo_id,
                folder_path=str(adapter_dir),
                allow_patterns=list(ADAPTER_FILE_PATTERNS),
                commit_message="ftq: final adapter",
            )
        except Exception as exc:
            raise JobFailure(
                f"the final push to {self.spec.repo_id!r} failed: {type(exc).__name__}: {exc}",
                code="hub_error",
                param="hub.repo_id",
            ) from exc
        url = str(info.commit_url)
        self.reporter.hub_commit(None, url)
        return url
