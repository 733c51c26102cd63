"""Weights & Biases: one run per job, started and always finished by ftq (the Trainer's callback only logs to it).

The run id is the job id, so every attempt of a job continues the same run (`resume="allow"`). Without an API
key the run is offline and its local directory is recorded instead of a URL.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from shared.spec import JobSpec


class WandbReporter(Protocol):
    """Where the run's whereabouts are recorded."""

    def wandb(self, run_id: str, url: str | None, directory: str, mode: str) -> None: ...


def wandb_mode(api_key: str | None = None) -> str:
    """`WANDB_MODE` if set, else online when there is an API key (the owner's or the team's), else offline."""
    return os.environ.get("WANDB_MODE") or ("online" if api_key or os.environ.get("WANDB_API_KEY") else "offline")


@contextmanager
def wandb_run(
    spec: JobSpec, job_id: str, job_dir: Path, reporter: WandbReporter, api_key: str | None = None
) -> Iterator[Any]:
    """Start (or resume) the job's W&B run when the spec asks for one, and finish it however training ends.

    `api_key` is the owner's; None leaves wandb to read the team's `WANDB_API_KEY`.
    """
    if spec.wandb is None:
        yield None
        return
    import wandb

    job_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=spec.wandb.project,
        entity=spec.wandb.entity,
        name=spec.wandb.run_name or job_id,
        tags=list(spec.wandb.tags),
        config={"ftq": {"job_id": job_id, "spec": spec.model_dump(mode="json")}},
        id=job_id,
        resume="allow",
        dir=str(job_dir),
        mode=wandb_mode(api_key),
        settings=wandb.Settings(api_key=api_key) if api_key else None,
    )
    reporter.wandb(run.id, run.url, str(Path(run.dir).parent), run.settings.mode)
    exit_code = 1
    try:
        yield run
        exit_code = 0
    finally:
        run.finish(exit_code=exit_code)
