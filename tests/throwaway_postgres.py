"""A PostgreSQL server of a test's own (initdb + pg_ctl in a temp dir), so the test may stop and start it."""

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.services import free_port

BIN = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1])


def _as_postgres(*args: str) -> None:
    # initdb refuses to run as root: run the server tools as the postgres user.
    command = " ".join(args)
    subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", command], check=True, capture_output=True)


class ThrowawayPostgres:
    """A cluster in a fresh directory of its own (pytest's are root-only) on a free port, trust auth."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="ftq-pg-"))
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        """Create the cluster."""
        shutil.chown(self.directory, "postgres", "postgres")
        os.chmod(self.directory, 0o700)
        _as_postgres(
            str(BIN / "initdb"), "-D", str(self.directory / "data"), "-A", "trust", "-U", "postgres", "--no-sync"
        )

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"'-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off'"
        log = self.directory / "server.log"
        _as_postgres(
            str(BIN / "pg_ctl"), "-D", str(self.directory / "data"), "-o", options, "-l", str(log), "-w", "start"
        )

    def stop(self) -> None:
        """Stop the server at once, as a crash would."""
        _as_postgres(str(BIN / "pg_ctl"), "-D", str(self.directory / "data"), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        """Stop the server if it runs and delete its files."""
        subprocess.run(
            [
                "su",
                "postgres",
                "-s",
                "/bin/sh",
                "-c",
                f"{BIN / 'pg_ctl'} -D {self.directory / 'data'} -m immediate stop",
            ],
            capture_output=True,
        )
        shutil.rmtree(self.directory, ignore_errors=True)
