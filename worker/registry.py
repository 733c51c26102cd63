"""Keeps this worker's row in the registry (`GET /workers`): written when Celery is ready, refreshed by a
heartbeat thread in the main process, marked stopped on a clean shutdown. Never imports torch."""

import logging
import os
import shutil
import socket
import subprocess
import threading
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from shared.db import session_scope
from shared.settings import get_settings
from shared.workers import beat_worker, register_worker, stop_worker

log = logging.getLogger(__name__)
_stop = threading.Event()
_me: dict[str, Any] = {}


def gpu_name(index: str | None) -> str | None:
    """The name nvidia-smi gives the GPU `index` (the first of a list), or None without one."""
    nvidia_smi = shutil.which("nvidia-smi")
    if index is None or nvidia_smi is None:
        return None
    first = index.split(",")[0].strip()
    try:
        out = subprocess.run(
            [nvidia_smi, "--query-gpu=name", "--format=csv,noheader", f"--id={first}"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def host_gpu() -> str | None:
    """The GPU this worker is pinned to, as the host numbers it where that is unambiguous.

    In a container holding one GPU the NVIDIA runtime shows it as index 0, and names the host's in
    NVIDIA_VISIBLE_DEVICES; on a bare box, or in a container holding several GPUs (`ftq worker --gpus`), the
    worker's CUDA_VISIBLE_DEVICES is the index a job launched over several of them uses.
    """
    nvidia = os.environ.get("NVIDIA_VISIBLE_DEVICES", "")
    if nvidia and nvidia not in ("all", "none", "void") and "," not in nvidia:
        return nvidia
    return os.environ.get("CUDA_VISIBLE_DEVICES") or None


def _beat_forever(name: str, pid: int, interval_s: float) -> None:
    while not _stop.wait(interval_s):
        try:
            with session_scope() as session:
                beat_worker(session=session, name=name, pid=pid)
                session.commit()
        except Exception:  # the database may be away for a while; the next beat tries again
            log.warning("worker heartbeat failed", exc_info=True)


@worker_ready.connect
def register(sender: Any, **_kwargs: Any) -> None:
    """Write this worker's row and start its heartbeat."""
    settings = get_settings()
    name = str(sender.hostname)
    validate = settings.validate_queue_name in {q.name for q in sender.app.amqp.queues.consume_from.values()}
    gpu = host_gpu()
    _me.update(name=name, pid=os.getpid())
    try:
        with session_scope() as session:
            register_worker(
                session=session,
                name=name,
                kind="validate" if validate else "gpu",
                hostname=socket.gethostname(),
                gpu=None if validate else gpu,
                gpu_name=None if validate else gpu_name(os.environ.get("CUDA_VISIBLE_DEVICES")),
                pid=os.getpid(),
            )
            session.commit()
    except Exception:
        log.warning("could not register worker %s", name, exc_info=True)
    beat = threading.Thread(
        target=_beat_forever, args=(name, os.getpid(), settings.worker_heartbeat_s), name="ftq-registry", daemon=True
    )
    beat.start()
    _me["beat"] = beat


@worker_shutdown.connect
def unregister(**_kwargs: Any) -> None:
    """Mark this worker stopped (its heartbeat thread stopped first, so that no late beat follows the mark)."""
    _stop.set()
    if not _me:
        return
    _me["beat"].join(timeout=5)
    try:
        with session_scope() as session:
            stop_worker(session=session, name=_me["name"], pid=_me["pid"])
            session.commit()
    except Exception:
        log.warning("could not mark worker %s stopped", _me["name"], exc_info=True)
