"""Following a job from the terminal: a live progress bar (step/total, loss, tokens/s, ETA) with the job's events
printed above it, ending with the outcome. Without a terminal (a script, a CI log) it prints a line per change.
"""

import json
import time
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from api.schemas import EventRead, JobRead
from ftq.client import TERMINAL, Client

EXIT_CODES = {"succeeded": 0, "failed": 1, "cancelled": 3}


def exit_code(job: JobRead) -> int:
    """0 for a job that succeeded, 1 failed, 3 cancelled."""
    return EXIT_CODES.get(job.status.value, 1)


def describe(job: JobRead) -> str:
    """One line on a job: status, step/total, loss, tokens/s, ETA."""
    p = job.progress
    parts = [f"{job.id} {job.status.value}"]
    if p.total_steps:
        unit = "answered" if job.spec.kind == "evaluation" else "step"
        parts.append(f"{unit} {p.step}/{p.total_steps}")
    if p.loss is not None:
        parts.append(f"loss {p.loss:.4f}")
    if p.tokens_per_second:
        parts.append(f"{p.tokens_per_second:,.0f} tok/s")
    if p.eta_seconds is not None and job.status.value == "running":
        parts.append(f"ETA {format_duration(p.eta_seconds)}")
    if job.queue_position:
        parts.append(f"queue position {job.queue_position}")
    return "  ".join(parts)


def format_duration(seconds: float) -> str:
    """`42s`, `3m05s`, `2h07m`."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def event_line(event: EventRead) -> str:
    """An event as a log line: time, type, message."""
    return f"{event.created_at.astimezone():%H:%M:%S} {event.type.value:<10} {event.message}"


def scores_line(scores: dict[str, Any]) -> str:
    """An evaluation's figures on one line, the base model's after them."""

    def figures(of: dict[str, Any]) -> str:
        if "accuracy" in of:
            return f"accuracy {of['accuracy']:.1%} on {of['rows']} rows"
        mae, rmsle = of.get("mae"), of.get("rmsle")
        return (
            f"MAE {'-' if mae is None else f'{mae:,.2f}'}, RMSLE {'-' if rmsle is None else f'{rmsle:.3f}'},"
            f" hits {of.get('hit_rate', 0):.1%}, unparsable {of.get('unparsable', 0)} of {of.get('rows', 0)} rows"
        )

    line = f"{scores.get('model', 'fine-tune')}: {figures(scores)}"
    if "baseline" in scores:
        line += f"; base model: {figures(scores['baseline'])}"
    return line


def outcome_line(job: JobRead) -> str:
    """How the job ended, with where its result is or why it failed."""
    took = ""
    if job.started_at and job.finished_at:
        took = f" in {format_duration((job.finished_at - job.started_at).total_seconds())}"
    if job.status.value == "succeeded" and job.spec.kind == "evaluation":
        return f"succeeded{took}: {scores_line(job.result.evaluation or {})}"
    if job.status.value == "succeeded":
        where = job.result.hub_commit_url or job.result.adapter_path or ""
        loss = f"{job.progress.loss:.4f}" if job.progress.loss is not None else "-"
        return f"succeeded{took}: step {job.progress.step}, loss {loss}; adapter {where}".rstrip()
    if job.status.value == "failed" and job.error is not None:
        param = f" ({job.error.param})" if job.error.param else ""
        return f"failed{took}: {job.error.code}{param}: {job.error.message}"
    return f"{job.status.value}{took} at step {job.progress.step}"


class Follower:
    """Polls one job (and, for logs, its events) until it ends, drawing the bar or printing lines."""

    def __init__(self, client: Client, job_id: str, *, logs: bool, as_json: bool, poll_s: float = 1.0) -> None:
        self.client = client
        self.job_id = job_id
        self.logs = logs
        self.as_json = as_json
        self.poll_s = poll_s
        self.last_event: int | None = None
        self.console = Console(highlight=False, soft_wrap=True)

    def run(self) -> JobRead:
        """Follow until the job ends; returns it."""
        live = self.console.is_terminal and not self.as_json
        progress = Progress(
            TextColumn("[bold]{task.fields[status]:<11}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  {task.fields[speed]} tok/s  ETA {task.fields[eta]}"),
            console=self.console,
            disable=not live,
        )
        with progress:
            task = progress.add_task("train", total=None, status="", loss="-", speed="-", eta="-")
            last_line = ""
            while True:
                job = self.client.jobs.get(self.job_id)
                self._print_events(progress)
                if live:
                    self._draw(progress, task, job)
                elif not self.as_json and not self.logs and (line := describe(job)) != last_line:
                    self.console.print(line)
                    last_line = line
                if job.status.value in TERMINAL:
                    self._print_events(progress)
                    return job
                time.sleep(self.poll_s)

    def _draw(self, progress: Progress, task: TaskID, job: JobRead) -> None:
        p = job.progress
        fields: dict[str, Any] = {
            "status": f"queued #{job.queue_position}" if job.queue_position else job.status.value,
            "loss": f"{p.loss:.4f}" if p.loss is not None else "-",
            "speed": f"{p.tokens_per_second:,.0f}" if p.tokens_per_second else "-",
            "eta": format_duration(p.eta_seconds) if p.eta_seconds is not None else "-",
        }
        progress.update(task, total=p.total_steps, completed=p.step, **fields)

    def _print_events(self, progress: Progress) -> None:
        if not self.logs:
            return
        for event in self.client.jobs.events(self.job_id, after=self.last_event):
            self.last_event = event.id
            if self.as_json:
                print(event.model_dump_json(), flush=True)  # noqa: T201 (JSON lines for scripts)
            else:
                progress.console.print(event_line(event), markup=False)


def print_json(data: Any) -> None:
    """Print a pydantic model, a list of them, or plain data as indented JSON."""
    if hasattr(data, "model_dump"):
        data = data.model_dump(mode="json")
    elif isinstance(data, list):
        data = [item.model_dump(mode="json") if hasattr(item, "model_dump") else item for item in data]
    print(json.dumps(data, indent=2, default=str))  # noqa: T201


def age(when: datetime) -> str:
    """How long ago, e.g. `3m05s ago`."""
    return f"{format_duration((datetime.now(when.tzinfo) - when).total_seconds())} ago"
