"""Data preparation at scale: load, split at the template and tokenize N pricer rows with the worker's own code
(`worker.data`), printing the seconds of each stage and the process's peak memory.

    .venv/bin/python bench/data_prep.py --rows 400000            # builds the file once, then measures
    .venv/bin/python bench/data_prep.py --rows 400000 --again    # a resubmitted job: the cached result

The rows are the bundled pricer rows (or ../shared/data/pricer/train.jsonl) repeated to N; the tokenizer is the
tiny model's BPE tokenizer (Llama 3's cannot be downloaded here; both are fast Rust tokenizers).
"""

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED_ROWS = REPO.parent / "shared" / "data" / "pricer" / "train.jsonl"
BUNDLED_ROWS = REPO / "examples" / "data" / "pricer-400.jsonl"


def build_rows(path: Path, n: int) -> None:
    """Write n rows cycling through the pricer rows (text field only, as a job's dataset would have)."""
    source = SHARED_ROWS if SHARED_ROWS.exists() else BUNDLED_ROWS
    texts = [json.loads(line)["text"] for line in source.read_text().splitlines() if line.strip()]
    with open(path, "w") as out:
        for i in range(n):
            out.write(json.dumps({"text": texts[i % len(texts)]}) + "\n")


def peak_rss_mb() -> float:
    """The process's peak resident memory (and its children's, for dataset worker processes), in MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def main() -> int:
    """Measure each stage once."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "ftq-data-prep")
    parser.add_argument("--again", action="store_true", help="keep the datasets cache of an earlier run")
    parser.add_argument("--max-length", type=int, default=320)
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    os.environ["HF_DATASETS_CACHE"] = str(args.work_dir / "datasets-cache")
    if not args.again:
        import shutil

        shutil.rmtree(args.work_dir / "datasets-cache", ignore_errors=True)
    rows_path = args.work_dir / f"pricer-{args.rows}.jsonl"
    if not rows_path.exists():
        build_rows(rows_path, args.rows)
    model_dir = args.work_dir / "tiny-llama"

    from shared.spec import DatasetSpec
    from worker.data import load_rows, split_at_template, tokenize_pairs
    from worker.sources import load_tokenizer
    from worker.tiny_model import build_tiny_llama

    if not (model_dir / "config.json").exists():
        build_tiny_llama(BUNDLED_ROWS, model_dir)
    roots = [args.work_dir.resolve()]
    timings: dict[str, float] = {}
    start = time.perf_counter()
    tokenizer = load_tokenizer(str(model_dir), roots)
    spec = DatasetSpec(id=str(rows_path))
    t = time.perf_counter()
    rows = load_rows(spec, roots)
    timings["load"] = time.perf_counter() - t
    t = time.perf_counter()
    pairs = split_at_template(rows, spec)
    timings["split"] = time.perf_counter() - t
    t = time.perf_counter()
    tokenized, stats = tokenize_pairs(pairs, tokenizer, args.max_length)
    timings["tokenize"] = time.perf_counter() - t
    total = time.perf_counter() - start
    result = {
        "rows": args.rows,
        "cores": os.cpu_count(),
        "again": args.again,
        "seconds": {k: round(v, 2) for k, v in timings.items()} | {"total": round(total, 2)},
        "rows_per_s": round(args.rows / total),
        "peak_rss_mb": round(peak_rss_mb()),
        "stats": stats.as_dict(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
