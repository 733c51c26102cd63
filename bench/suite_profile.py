"""Where the test suite's CPU goes by function: total a py-spy profile of a whole run by process kind, imports apart.

    py-spy record -s --nonblocking -r 20 -f raw -o suite.raw -- .venv/bin/python -m pytest -p no:xdist -q
    python3 bench/suite_profile.py suite.raw [--rate 20] [--top 25] [--out OUT.json]

py-spy samples every Python process of the run (`-s`) while it is on a CPU; each sample's stack ends in the process
that was sampled. A sample whose stack is inside an import counts as import time; any other is charged to the
innermost function of this repository on its stack (or to the library frames, when none is ours). Native threads
with no Python frame (torch's compute threads) show as an empty stack of their process.
"""

import argparse
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from suite_census import kind_of

PROCESS = re.compile(r"process \d+:")
OURS = re.compile(r"\((?:/[^:]*/)?((?:worker|shared|api|ftq|tests|bench)/[^:]+):\d+\)")


def parse(line: str) -> tuple[str, list[str], int]:
    """(the sampled process's command line, its frames outermost first, the sample count) of one raw line."""
    stack, count = line.rsplit(" ", 1)
    frames = stack.split(";")
    last = max(i for i, frame in enumerate(frames) if frame.startswith("process "))
    return PROCESS.sub("", frames[last]).strip('"'), frames[last + 1 :], int(count)


def kind_of_sampled(command: str) -> str:
    """The kind of a sampled process. py-spy keeps each process's first command line, so a spare that took a job
    still reads `--spare`: every training process is one kind here. It leaves the root process's empty."""
    if "worker.runner" in command:
        return "trainer (cold or spare)"
    return kind_of(command) if command else "pytest"


def charge(frames: list[str]) -> str:
    """What a sample is charged to: `import`, the innermost repository function, or the last library frames."""
    names = [frame.split(" (")[0] for frame in frames]
    if "_find_and_load" in names:
        return "import"
    ours = [f"{frame.split(' (')[0]} {match.group(1)}" for frame in frames if (match := OURS.search(frame))]
    return ours[-1] if ours else " > ".join(names[-2:]) or "(native threads)"


def profile(path: Path, rate: float) -> dict[str, Any]:
    """CPU seconds by kind of process, and by what they were charged to within each kind."""
    kinds: Counter[str] = Counter()
    charged: Counter[tuple[str, str]] = Counter()
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        command, frames, count = parse(line)
        kind = kind_of_sampled(command)
        kinds[kind] += count
        charged[kind, charge(frames)] += count
    return {
        "cpu_s": round(sum(kinds.values()) / rate, 1),
        "kinds": {kind: round(count / rate, 1) for kind, count in kinds.most_common()},
        "charged": [[round(count / rate, 1), kind, what] for (kind, what), count in charged.most_common()],
    }


def main() -> None:
    """Print the totals (and write them as JSON with --out)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("raw", type=Path)
    parser.add_argument("--rate", type=float, default=20.0, help="py-spy's samples a second (-r)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = profile(args.raw, args.rate)
    print(f"{result['cpu_s']:8.1f} s of CPU sampled")  # noqa: T201
    for kind, seconds in result["kinds"].items():
        imports = next((s for s, k, what in result["charged"] if k == kind and what == "import"), 0.0)
        print(f"{seconds:8.1f} s  imports {imports:6.1f} s  {kind}")  # noqa: T201
    for seconds, kind, what in result["charged"][: args.top]:
        print(f"{seconds:8.1f} s  {kind:40.40s} {what}")  # noqa: T201
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
