"""A Redis server of a test's own on a free port, so the test may stop and start it without disturbing the local
Redis that tests running beside it (pytest-xdist) use."""

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from tests.services import free_port, wait_until


class ThrowawayRedis:
    """`redis-server` in the foreground, keeping nothing on disk, on a port of its own."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait until it answers."""
        command = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        wait_until(lambda: _pings(client), timeout_s=30, what=f"Redis on port {self.port}")

    def stop(self) -> None:
        """Stop the server (its queues are lost, as with a restart of the real one without persistence)."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False


@contextmanager
def throwaway_redis() -> Iterator[ThrowawayRedis]:
    """A running throwaway Redis, stopped at the end."""
    server = ThrowawayRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()
