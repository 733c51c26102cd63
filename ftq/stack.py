"""Start and stop the API and the workers as child processes (what `ftq up` runs)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from shared.auth import create_api_key
from shared.db import session_scope
from shared.migrate import upgrade_database
from shared.queue import declare_queues
from shared.settings import Settings
from shared.vault import ensure_key_file

# A worker drains on SIGTERM: its trainer saves a checkpoint at the next step and the job goes back to the queue.
STOP_GRACE_S = 60.0


def prepare_data_dir(settings: Settings) -> str | None:
    """Create the data dir, migrate the database, and on first start create the admin key.

    Returns the new admin key (to print once), or None when one was made before.
    """
    data = settings.data_path
    for path in (data, settings.jobs_dir, *settings.allowed_roots):
        path.mkdir(parents=True, exist_ok=True)
    upgrade_database(settings.db_url)
    ensure_key_file(settings)  # the key that encrypts users' tokens, unless FTQ_SECRET_KEY is set
    declare_queues()
    key_file = data / "admin.key"
    if key_file.exists():
        return None
    with session_scope() as session:
        _key, raw = create_api_key(session=session, name="admin", is_admin=True)
        session.commit()
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(raw + "\n")
    return raw


@dataclass(frozen=True)
class Process:
    """One process of the stack: a name, its command line and what it adds to the environment."""

    name: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)


def available_gpus() -> list[str]:
    """The indexes of the GPUs nvidia-smi lists (none without a driver)."""
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        return []
    try:
        out = subprocess.run(
            [nvidia_smi, "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip().isdigit()] if out.returncode == 0 else []


def parse_gpus(value: str) -> list[str]:
    """`all` (every GPU nvidia-smi lists), `none`, or a comma-separated list of GPU indexes such as `0,1`."""
    if value == "all":
        return available_gpus()
    if value == "none":
        return []
    gpus = [part.strip() for part in value.split(",") if part.strip()]
    if not gpus or not all(g.isdigit() for g in gpus) or len(set(gpus)) != len(gpus):
        raise ValueError(f"--gpus takes all, none or distinct GPU indexes such as 0,1 (got {value!r})")
    return gpus


def gpu_worker(settings: Settings, gpu: str | None) -> Process:
    """A training worker pinned to one GPU (`gpuN`), or an unpinned one (`cpu0`) on a box without GPUs."""
    if gpu is None:
        return Process("cpu0", worker_command(settings, "cpu0"))
    # One visible GPU per worker: TRL refuses to start with several, and jobs never share a card.
    return Process(f"gpu{gpu}", worker_command(settings, f"gpu{gpu}"), {"CUDA_VISIBLE_DEVICES": gpu})


def stack_commands(settings: Settings, host: str, port: int, gpus: list[str] | None = None) -> list[Process]:
    """The API, one training worker per GPU (one CPU worker without GPUs) and one validation worker."""
    trainers = [gpu_worker(settings, gpu) for gpu in gpus] if gpus else [gpu_worker(settings, None)]
    return [
        Process("api", api_command(host, port)),
        *trainers,
        Process("validate", worker_command(settings, "validate", validate=True)),
    ]


def api_command(host: str, port: int) -> list[str]:
    """The command line of the API server."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "api.main:app",
        "--host",
        host,
        "--port",
        str(port),
        "--no-access-log",
    ]


def worker_command(settings: Settings, name: str = "gpu0", *, validate: bool = False) -> list[str]:
    """The command line of one Celery worker: one process, one job at a time.

    A GPU worker trains (queue `FTQ_QUEUE`); a validation worker checks new jobs' data on the CPU
    (`FTQ_VALIDATE_QUEUE`), so a user learns within seconds, not after a queue wait, that a dataset is wrong.
    """
    queue = settings.validate_queue_name if validate else settings.queue_name
    command = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", queue]
    command += ["-c", "1", "-P", "prefork", "-n", f"{name}@%h", "--loglevel", "INFO"]
    if settings.uses_embedded_broker:
        command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    return command


class Stack:
    """The child processes of `ftq up`; stopping it stops every one of them."""

    def __init__(self, commands: list[Process], env: dict[str, str]) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []
        self.commands = commands
        self.env = env

    def start(self) -> None:
        """Start every child in its own process group (those started are stopped by `stop` if one fails)."""
        for spec in self.commands:
            env = {**self.env, **spec.env}
            self.processes.append(subprocess.Popen(spec.command, env=env, start_new_session=True))

    def poll_dead(self) -> subprocess.Popen[bytes] | None:
        """A child that exited, if any."""
        return next((p for p in self.processes if p.poll() is not None), None)

    def stop(self) -> None:
        """SIGTERM each child (only the main process: a worker then drains its job), then SIGKILL each child's
        whole group if it is still there after the grace period."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for process in self.processes:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
