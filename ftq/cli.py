"""The `ftq` command line."""

import argparse
import functools
import os
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from ftq.admin import add_admin_commands
from ftq.commands import add_user_commands
from shared.settings import Settings, apply_data_dir

if TYPE_CHECKING:
    from ftq.stack import Stack


def cmd_up(args: argparse.Namespace) -> int:
    """Run the API and one worker in the foreground until Ctrl-C or SIGTERM."""
    from ftq.stack import Stack, parse_gpus, prepare_data_dir, stack_commands

    try:
        gpus = parse_gpus(args.gpus)
    except ValueError as exc:
        print(f"ftq up: {exc}", file=sys.stderr)
        return 2
    settings = apply_data_dir(args.data_dir)
    new_key = prepare_data_dir(settings)
    key_file = settings.data_path / "admin.key"
    if new_key:
        print(f"Admin API key (saved to {key_file}, shown once):\n  {new_key}", flush=True)
    broker = "embedded (SQLite)" if settings.uses_embedded_broker else "BROKER_URL"
    processes = stack_commands(settings, args.host, args.port, gpus)
    trainers = ", ".join(p.name for p in processes[1:-1])
    print(f"ftq up: data {settings.data_path}, broker {broker}, API http://{args.host}:{args.port}", flush=True)
    print(f"ftq up: training workers {trainers}", flush=True)
    demo = None
    if args.demo:
        demo = functools.partial(_run_demo, settings, f"http://{args.host}:{args.port}", key_file.read_text().strip())
    return run_in_foreground("ftq up", Stack(processes, env=dict(os.environ)), demo)


def run_in_foreground(
    name: str, stack: "Stack", after_start: Callable[[Callable[[], bool]], None] | None = None
) -> int:
    """Start the stack's processes and watch them until Ctrl-C or SIGTERM (0), or until one exits (1); stop them all
    either way. `after_start` runs once they are started, told whether a stop was asked."""
    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        stack.start()
        if after_start is not None:
            after_start(lambda: stopping)
        while not stopping:
            dead = stack.poll_dead()
            if dead is not None:
                print(f"{name}: {dead.args!r} exited with {dead.returncode}", file=sys.stderr)
                return 1
            time.sleep(0.5)
        return 0
    finally:
        print(f"{name}: stopping", flush=True)
        stack.stop()


def _run_demo(settings: Settings, base_url: str, api_key: str, stopping: Callable[[], bool]) -> None:
    import httpx

    from ftq import demo

    model, rows = demo.prepare_demo_files(settings)
    spec = demo.demo_spec(model, rows)
    demo.write_spec(settings.data_path / "demo-spec.json", spec)
    for _ in range(120):
        if stopping():
            return
        try:
            httpx.get(f"{base_url}/healthz", timeout=2).raise_for_status()
            break
        except httpx.HTTPError:
            time.sleep(0.5)
    job = demo.submit(base_url, api_key, spec)
    print(f"demo job {job['id']} submitted (spec in {settings.data_path / 'demo-spec.json'})", flush=True)
    final = demo.follow(base_url, api_key, job["id"], stopping)
    if final is not None:
        print(f"demo job {final['status']}; the API keeps serving on {base_url} (Ctrl-C to stop)", flush=True)


def cmd_api(args: argparse.Namespace) -> int:
    """Run only the API server."""
    from ftq.stack import api_command

    apply_data_dir(args.data_dir)
    command = api_command(args.host, args.port)
    os.execv(command[0], command)


def cmd_worker(args: argparse.Namespace) -> int:
    """Run only a worker (one job at a time): a training worker, pinned with --gpu N, or a validation worker; with
    --gpus, one training worker per GPU of this box (so that a job can take several of them)."""
    from ftq.stack import Stack, gpu_worker, parse_gpus, worker_command

    settings = apply_data_dir(args.data_dir)
    if args.gpus is not None:
        try:
            gpus = parse_gpus(args.gpus)
        except ValueError as exc:
            print(f"ftq worker: {exc}", file=sys.stderr)
            return 2
        workers = [gpu_worker(settings, gpu) for gpu in gpus] or [gpu_worker(settings, None)]
        print(f"ftq worker: training workers {', '.join(w.name for w in workers)}", flush=True)
        return run_in_foreground("ftq worker", Stack(workers, env=dict(os.environ)))
    if args.validate:
        command = worker_command(settings, args.name or "validate", validate=True)
    else:
        process = gpu_worker(settings, args.gpu)
        os.environ.update(process.env)
        command = worker_command(settings, args.name) if args.name else process.command
    os.execv(command[0], command)


def cmd_migrate(args: argparse.Namespace) -> int:
    """Bring the database to the newest schema."""
    from shared.migrate import upgrade_database

    settings = apply_data_dir(args.data_dir)
    upgrade_database(settings.db_url)
    print("database is up to date")
    return 0


def _gpu_index(value: str) -> str:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"a GPU index such as 0 (got {value!r})")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="ftq", description="Self-hosted fine-tuning jobs.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--data-dir", help="data directory (default $FTQ_DATA_DIR or ~/.ftq)")
        p.set_defaults(func=func)
        return p

    up = add("up", cmd_up, "Run the API and the workers (one per GPU) in the foreground.")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--demo", action="store_true", help="build the tiny demo model, submit its job and follow it")
    up.add_argument(
        "--gpus",
        default="all",
        help="one training worker per GPU: all (default; one CPU worker when there is none), none, or e.g. 0,1",
    )
    api = add("api", cmd_api, "Run only the API server.")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    worker = add("worker", cmd_worker, "Run only a worker: a GPU worker, or with --validate a validation worker.")
    worker.add_argument("--name", help="worker name (shown in logs)")
    pinned = worker.add_mutually_exclusive_group()
    pinned.add_argument("--validate", action="store_true", help="validate new jobs' data (CPU) instead of training")
    pinned.add_argument("--gpu", type=_gpu_index, help="train on this GPU only (sets CUDA_VISIBLE_DEVICES)")
    pinned.add_argument(
        "--gpus", help="one training worker per GPU of this box (named gpuN): all, or e.g. 0,1 (jobs may take several)"
    )
    add("migrate", cmd_migrate, "Bring the database to the newest schema.")
    add_admin_commands(add)
    add_user_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of `ftq`."""
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
