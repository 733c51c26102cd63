"""Where the test suite's CPU goes: sample every process's CPU time until stopped, then total it by kind.

    python3 bench/suite_census.py OUT.json & pid=$!; make test; kill -TERM $pid

Every 0.2 s it reads each /proc/<pid>/stat and cmdline and keeps, per process (pid and start time), the most CPU
time seen (less what a process had already spent when the census started); a process that exits between two
samples loses at most 0.2 s. At SIGTERM it writes
[[cpu_s, processes, kind], ...], largest first. A spare trainer that took a job retitles itself as a trainer and is
counted as one; a spare still waiting when its stack stopped is counted apart.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

TICKS = os.sysconf("SC_CLK_TCK")
KINDS = (  # the first needle found in a command line names its kind
    (("worker.runner --spare",), "spare trainer (never took a job)"),
    (("worker.runner", "ftq-train"), "trainer"),
    (("worker.launch", "torch.distributed"), "multi-GPU launcher and ranks"),
    (("celery",), "celery worker"),
    (("uvicorn", "api.main"), "api"),
    (("chrom", "playwright", "node "), "browser"),
    (("execnet",), "pytest-xdist worker (in-process tests)"),
    (("pytest",), "pytest"),
    (("postgres",), "postgres"),
    (("redis",), "redis"),
    (("ftq",), "ftq cli"),
)


def kind_of(command: str) -> str:
    """The kind of a process by its command line."""
    for needles, kind in KINDS:
        if any(needle in command for needle in needles):
            return kind
    return "other" if command else "unreadable (exited or a kernel thread)"


def sample(seen: dict[tuple[str, str], list[Any]], first: bool = False) -> None:
    """Record each live process's CPU time so far (the largest seen) and its kind; on the first pass, what each
    process had spent before is taken off."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        cpu_s = (int(fields[11]) + int(fields[12])) / TICKS
        key, kind = (entry.name, fields[19]), kind_of(command)
        known = seen.setdefault(key, [0.0, kind, cpu_s if first else 0.0])
        known[0] = max(known[0], cpu_s - known[2])
        if known[1].startswith("spare") and kind != known[1]:
            known[1] = kind  # the spare took a job
        elif known[1].startswith("unreadable"):
            known[1] = kind


def totals(seen: dict[tuple[str, str], list[Any]]) -> list[list[Any]]:
    """[cpu_s, processes, kind] per kind, largest first."""
    cpu: dict[str, float] = {}
    count: dict[str, int] = {}
    for cpu_s, kind, _before in seen.values():
        cpu[kind] = cpu.get(kind, 0.0) + cpu_s
        count[kind] = count.get(kind, 0) + 1
    return sorted(([round(cpu[k], 1), count[k], k] for k in cpu), reverse=True)


def main() -> None:
    """Sample until SIGTERM, then write the totals to the file named on the command line."""
    out = Path(sys.argv[1])
    seen: dict[tuple[str, str], list[Any]] = {}

    def finish(*_args: Any) -> None:
        out.write_text(json.dumps(totals(seen), indent=1) + "\n")
        sys.exit(0)

    signal.signal(signal.SIGTERM, finish)
    sample(seen, first=True)
    while True:
        sample(seen)
        time.sleep(0.2)


if __name__ == "__main__":
    main()
