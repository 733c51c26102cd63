"""The user's commands, on the Python client: submit, list, status, logs, cancel, checkpoints, download, files,
me, secrets, login. They talk to the API only (`FTQ_URL`, `FTQ_API_KEY` or `~/.config/ftq/config.toml`)."""

import argparse
import getpass
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.console import Console
from rich.table import Table

from ftq.client import TERMINAL, APIError, Client, config_path
from ftq.follow import Follower, age, describe, event_line, exit_code, outcome_line, print_json
from shared.models import JobStatus


def _client(args: argparse.Namespace) -> Client:
    return Client(base_url=args.url)


def _finish(client: Client, job_id: str, *, logs: bool, as_json: bool) -> int:
    """Follow a job to its end; print its outcome (or its JSON) and return the exit code."""
    job = Follower(client, job_id, logs=logs, as_json=as_json).run()
    if as_json and not logs:
        print_json(job)
    elif not as_json:
        Console(highlight=False, soft_wrap=True).print(outcome_line(job), markup=False)
    return exit_code(job)


def cmd_submit(args: argparse.Namespace) -> int:
    """Submit a job from a YAML or JSON spec; with --wait, follow it to its end."""
    with _client(args) as client:
        return _submit(client, args.spec, args)


def cmd_eval(args: argparse.Namespace) -> int:
    """Score an adapter (an ftq job id, a local directory or a Hub id) or a base model on a dataset, without
    training; with --wait, follow it and print the scores."""
    dataset = {"id": args.dataset, "split": args.split, "max_rows": args.max_rows}
    dataset["response_template"] = args.response_template
    with _client(args) as client:
        spec = client.jobs.evaluation_spec(
            {k: v for k, v in dataset.items() if v is not None},
            adapter=args.adapter,
            base_model=args.base_model,
            metric=args.metric,
            baseline=args.baseline or None,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
        )
        return _submit(client, spec, args)


def _submit(client: Client, spec: Path | dict[str, Any], args: argparse.Namespace) -> int:
    if args.dry_run:
        plan = client.jobs.dry_run(spec)
        if args.json:
            print_json(plan)
        else:
            unit = "answers" if plan.spec.kind == "evaluation" else "steps"
            print(f"valid: {plan.planned_steps} {unit} planned, {plan.stats.rows} rows")
            for warning in plan.warnings:
                print(f"warning: {warning}")
        return 0
    job = client.jobs.create(spec, idempotency_key=args.idempotency_key)
    if not args.wait:
        print_json(job) if args.json else print(job.id)
        return 0
    if not args.json:
        print(f"submitted {job.id}", flush=True)
    return _finish(client, job.id, logs=False, as_json=args.json)


def cmd_list(args: argparse.Namespace) -> int:
    """List jobs, newest first."""
    with _client(args) as client:
        jobs = []
        for job in client.jobs.list(status=args.status):
            jobs.append(job)
            if len(jobs) >= args.limit:
                break
    if args.json:
        print_json(jobs)
        return 0
    table = Table(box=None, pad_edge=False)
    for column in ("ID", "STATUS", "OWNER", "PROGRESS", "LOSS", "CREATED"):
        table.add_column(column)
    for job in jobs:
        p = job.progress
        steps = f"{p.step}/{p.total_steps}" if p.total_steps else "-"
        loss = f"{p.loss:.4f}" if p.loss is not None else "-"
        table.add_row(job.id, job.status.value, job.owner, steps, loss, age(job.created_at))
    Console(highlight=False, soft_wrap=True).print(table)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Show one job."""
    with _client(args) as client:
        job = client.jobs.get(args.job_id)
    if args.json:
        print_json(job)
        return 0
    print(describe(job))
    if job.status.value in TERMINAL:
        print(outcome_line(job))
    if job.wandb_url:
        print(f"W&B: {job.wandb_url}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    """Print a job's events; with -f, follow them live under a progress bar until the job ends."""
    with _client(args) as client:
        if args.follow:
            return _finish(client, args.job_id, logs=True, as_json=args.json)
        for event in client.jobs.events(args.job_id):
            print(event.model_dump_json() if args.json else event_line(event))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel a job."""
    with _client(args) as client:
        job = client.jobs.cancel(args.job_id)
    print_json(job) if args.json else print(f"{job.id} {job.status.value}")
    return 0


def cmd_checkpoints(args: argparse.Namespace) -> int:
    """List a job's checkpoints."""
    with _client(args) as client:
        checkpoints = client.jobs.checkpoints(args.job_id)
    if args.json:
        print_json(checkpoints)
        return 0
    for checkpoint in checkpoints:
        loss = checkpoint.metrics.get("loss")
        print(f"step {checkpoint.step:<8} loss {loss if loss is not None else '-'}  {checkpoint.hub_commit_url or ''}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """Download a job's final adapter (or the checkpoint at --step) as a .tar.gz."""
    with _client(args) as client:
        path = client.jobs.download(args.job_id, args.output, step=args.step)
    print(path)
    return 0


def cmd_files_upload(args: argparse.Namespace) -> int:
    """Upload a dataset file; prints its id for `dataset.id`."""
    with _client(args) as client:
        record = client.files.upload(args.path)
    print_json(record) if args.json else print(record.id)
    return 0


def cmd_me(args: argparse.Namespace) -> int:
    """Show who the API key belongs to."""
    with _client(args) as client:
        me = client.me()
    if args.json:
        print_json(me)
        return 0
    stored = [name for name, state in me.secrets.model_dump().items() if state["set"]]
    print(
        f"{me.name}{' (admin)' if me.is_admin else ''}  priority {me.priority}  tokens: {', '.join(stored) or 'none'}"
    )
    return 0


def cmd_secrets_set(args: argparse.Namespace) -> int:
    """Store one of your tokens, read from a prompt or stdin (never from the command line)."""
    value = getpass.getpass(f"{args.name}: ") if sys.stdin.isatty() else sys.stdin.readline().strip()
    if not value:
        print("no value given", file=sys.stderr)
        return 2
    with _client(args) as client:
        client.request("PUT", "/me/secrets", json={args.name: value})
    print(f"{args.name} stored")
    return 0


def cmd_login(args: argparse.Namespace) -> int:
    """Save the API URL and your key in the config file (mode 0600), checking them first."""
    key = getpass.getpass("API key: ") if sys.stdin.isatty() else sys.stdin.readline().strip()
    url = args.url or "http://127.0.0.1:8000"
    with Client(base_url=url, api_key=key) as client:
        me = client.me()
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f'url = "{url}"\napi_key = "{key}"\n')
    print(f"signed in to {url} as {me.name}; saved to {path}")
    return 0


def add_user_commands(sub: Any) -> None:
    """Add the user's commands to the `ftq` parser's subcommands."""

    def command(
        name: str, func: Callable[[argparse.Namespace], int], *, json: bool = True, parent: Any = sub
    ) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = parent.add_parser(name, help=func.__doc__, description=func.__doc__)
        parser.add_argument("--url", help="API URL (default $FTQ_URL, the config file, or http://127.0.0.1:8000)")
        if json:
            parser.add_argument("--json", action="store_true", help="print JSON for scripts")
        parser.set_defaults(func=_reporting(func))
        return parser

    submit = command("submit", cmd_submit)
    submit.add_argument("spec", type=Path, help="a .yaml, .yml or .json spec file")
    submit.add_argument("--wait", action="store_true", help="follow the job to its end (exit 1 failed, 3 cancelled)")
    submit.add_argument("--dry-run", action="store_true", help="validate and plan only")
    submit.add_argument("--idempotency-key", help="a retry with the same key returns the first job")
    evaluate = command("eval", cmd_eval)
    evaluate.add_argument("--dataset", required=True, help="rows to score: a local file, an uploaded file id, a Hub id")
    evaluate.add_argument("--adapter", help="an ftq job id, a local adapter directory or a Hub id (default: none)")
    evaluate.add_argument("--base-model", help="the base model (default: the adapter job's)")
    evaluate.add_argument("--split", help="dataset split (default train)")
    evaluate.add_argument("--max-rows", type=int, help="score the first N rows only")
    evaluate.add_argument("--response-template", help='text that ends each prompt (default "Price is $")')
    evaluate.add_argument("--metric", choices=["numeric", "exact_match"], help="default numeric (prices)")
    evaluate.add_argument("--baseline", action="store_true", help="also score the base model without the adapter")
    evaluate.add_argument("--max-new-tokens", type=int, help="tokens generated per answer (default 8)")
    evaluate.add_argument("--batch-size", type=int, help="prompts generated at once (default 16)")
    evaluate.add_argument("--wait", action="store_true", help="follow the job to its end and print the scores")
    evaluate.add_argument("--dry-run", action="store_true", help="validate and plan only")
    evaluate.add_argument("--idempotency-key", help="a retry with the same key returns the first job")
    listing = command("list", cmd_list)
    listing.add_argument("--status", choices=[status.value for status in JobStatus])
    listing.add_argument("--limit", type=int, default=50)
    command("status", cmd_status).add_argument("job_id")
    logs = command("logs", cmd_logs)
    logs.add_argument("job_id")
    logs.add_argument("-f", "--follow", action="store_true", help="follow live until the job ends")
    command("cancel", cmd_cancel).add_argument("job_id")
    command("checkpoints", cmd_checkpoints).add_argument("job_id")
    download = command("download", cmd_download, json=False)
    download.add_argument("job_id")
    download.add_argument("--step", type=int, help="a checkpoint's step (default: the final adapter)")
    download.add_argument("-o", "--output", type=Path, help="file or directory to write")
    files = sub.add_parser("files", help="Dataset files.", description="Dataset files.")
    files_sub = files.add_subparsers(dest="files_command", required=True)
    command("upload", cmd_files_upload, parent=files_sub).add_argument("path", type=Path)
    command("me", cmd_me)
    secrets = sub.add_parser("secrets", help="Your stored tokens.", description="Your stored tokens.")
    secrets_sub = secrets.add_subparsers(dest="secrets_command", required=True)
    secret_name = command("set", cmd_secrets_set, json=False, parent=secrets_sub)
    secret_name.add_argument("name", choices=["hf_token", "wandb_api_key"])
    command("login", cmd_login, json=False)


def _reporting(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn API and connection errors into one line on stderr and exit code 1 (no traceback)."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except APIError as exc:
            print(f"ftq {args.command}: {exc}", file=sys.stderr)
            return 1
        except (OSError, ValueError, httpx.HTTPError, yaml.YAMLError) as exc:
            print(f"ftq {args.command}: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130

    run.__doc__ = func.__doc__
    return run
