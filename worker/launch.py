"""Launch one job over several GPUs: `python -m worker.launch RANKS JOB_ID ATTEMPT` starts `worker.runner JOB_ID
ATTEMPT` once per rank, with the environment torchrun gives its workers (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT), on the GPUs `CUDA_VISIBLE_DEVICES` names (rank N on the N-th).

Not torchrun itself: its agent reports any failed worker as exit code 1, and the supervising task needs the rank's
own code (out of memory: retry once; database gone: queue again). Here the launcher exits with the first failing
rank's code, or 0 once every rank has. When a rank exits with an error the others get `RANK_FAILED_GRACE_S` to end
on their own (rank 0 records the job's error); then, or at once when a rank was killed, they are killed too, since
they would wait for the missing one in every collective.
It imports no torch: it only starts and watches processes.
"""

import ctypes
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

from worker.exit_codes import EXIT_PEER_LOST

log = logging.getLogger("ftq.launch")
RANK_FAILED_GRACE_S = 20.0
PR_SET_PDEATHSIG = 1
POLL_S = 0.2


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on now (the ranks' rendezvous)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rank_environment(rank: int, ranks: int, port: int) -> dict[str, str]:
    """What torchrun sets for one local rank of a single-box job."""
    return {
        **os.environ,
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(ranks),
        "LOCAL_WORLD_SIZE": str(ranks),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


LIBC = ctypes.CDLL("libc.so.6", use_errno=True)  # loaded here: a child between fork and exec must not load libraries


def die_with(parent: int) -> None:
    """In a child of `parent`, before it runs: the kernel kills it when its parent dies, so no orphan keeps a GPU
    (and if the parent died before this, it exits now)."""
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def die_with_this_process() -> Callable[[], None]:
    """A `preexec_fn` that ties a child's life to this process."""
    return functools.partial(die_with, os.getpid())


def start_ranks(ranks: int, job_id: str, attempt: int) -> list[subprocess.Popen[bytes]]:
    """One runner per rank, in this launcher's process group (the supervisor's kill reaches them all), each killed
    by the kernel if the launcher dies."""
    port = free_port()
    command = [sys.executable, "-m", "worker.runner", job_id, str(attempt)]
    env = [rank_environment(r, ranks, port) for r in range(ranks)]
    return [subprocess.Popen(command, env=env[r], preexec_fn=die_with_this_process()) for r in range(ranks)]


def wait_for_ranks(processes: list[subprocess.Popen[bytes]], grace_s: float = RANK_FAILED_GRACE_S) -> int:
    """Wait for every rank; the exit status is the first failing rank's (0 when all succeed).

    A rank that exited with an error leaves the others `grace_s` (rank 0 may be recording the job's error); one
    killed by a signal leaves them nothing to wait for, so they are killed at once.
    """
    failed: int | None = None
    deadline: float | None = None
    while True:
        codes = [p.poll() for p in processes]
        if failed in (None, EXIT_PEER_LOST):
            failed = why_failed(codes)
            if failed is not None:  # a rank killed by a signal ends the grace a lost peer's report had started
                wait = time.monotonic() + (grace_s if failed > 0 else 0)
                deadline = wait if deadline is None else min(deadline, wait)
        if all(code is not None for code in codes):
            return as_exit_status(failed or 0)
        if deadline is not None and time.monotonic() >= deadline:
            log.warning("a rank failed (exit code %s); killing the ranks still running", failed)
            for process in processes:
                if process.poll() is None:
                    process.kill()
            deadline = float("inf")
        time.sleep(POLL_S)


def why_failed(codes: list[int | None]) -> int | None:
    """The code that says why the ranks failed: a rank's own failure rather than another's report of losing it."""
    failures = [code for code in codes if code not in (None, 0)]
    own = [code for code in failures if code != EXIT_PEER_LOST]
    return next(iter(own or failures), None)


def as_exit_status(code: int) -> int:
    """A Popen return code as a process exit status: killed by signal N is 128 + N, as a shell reports it."""
    return 128 - code if code < 0 else code


def stop_ranks(processes: list[subprocess.Popen[bytes]]) -> None:
    """Pass a termination on to every rank."""
    for process in processes:
        process.terminate()


def main() -> None:
    """Entry point: `python -m worker.launch RANKS JOB_ID ATTEMPT`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ranks, job_id, attempt = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    processes = start_ranks(ranks, job_id, attempt)
    signal.signal(signal.SIGTERM, lambda *_: stop_ranks(processes))  # a SIGTERM to the launcher alone, too
    sys.exit(wait_for_ranks(processes))


if __name__ == "__main__":
    main()
