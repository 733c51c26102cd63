"""Start and stop the API and a worker as child processes (what `ftq up` runs)."""

import os
import signal
import subprocess
import sys
import time

from shared.auth import create_api_key
from shared.db import session_scope
from shared.migrate import upgrade_database
from shared.settings import Settings

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


def stack_commands(settings: Settings, host: str, port: int) -> list[list[str]]:
    """The API, one GPU worker and one validation worker: everything `ftq up` runs."""
    return [
        api_command(host, port),
        worker_command(settings, "gpu0"),
        worker_command(settings, "validate", validate=True),
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

    def __init__(self, commands: list[list[str]], env: dict[str, str]) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []
        self.commands = commands
        self.env = env

    def start(self) -> None:
        """Start every child in its own process group (those started are stopped by `stop` if one fails)."""
        for command in self.commands:
            self.processes.append(subprocess.Popen(command, env=self.env, start_new_session=True))

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
