"""The training benchmark runs end to end on the CPU: both paths train a tiny 4-bit Llama on the same rows.

Timings are not checked (they mean nothing on a shared CPU); what is checked is that the result is whole and
that the reference recipe and ftq's worker path see the same batches and log the same losses.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.training

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench" / "train_throughput.py"
ROWS = REPO / "examples" / "data" / "pricer-400.jsonl"  # in the repo, so CI sees the same rows as a laptop
STEPS = 3
PATH_KEYS = {
    "path",
    "tokens_per_s",
    "step_s",
    "step_s_median",
    "stalls",
    "stall_s",
    "peak_gb",
    "first_step_s",
    "setup_s",
    "mfu",
    "timed_tokens",
    "tokens_per_step",
    "padded_tokens_per_step",
    "loss_tokens_per_step",
    "losses",
    "per_step",
    "ratio",
    "ratio_median",
    "max_loss_diff",
    "same_batches",
}
# Same model, rows, order and seed: the losses were bit-identical on torch 2.13 CPU / transformers 5.23 / TRL 1.16.
# The tolerance leaves room for other kernels, not for a different batch (that moves the loss by ~1e-2).
LOSS_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One tiny run of both paths."""
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "result.json"
    command = [
        sys.executable,
        str(BENCH),
        "--shape",
        "tiny",
        "--steps",
        str(STEPS),
        "--warmup",
        "1",
        "--rows",
        str(ROWS),
        "--model-dir",
        str(tmp / "model"),
        "--work-dir",
        str(tmp / "work"),
        "--out",
        str(out),
        # ftq's path as a GPU runs it: with the lean optimizer step (`auto` turns it on only on CUDA), which must
        # train to the same losses as bitsandbytes' own step in the reference.
        "--ftq-performance",
        '{"lean_optimizer": true}',
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert "| reference |" in run.stdout and "| ftq |" in run.stdout  # the summary table
    return json.loads(out.read_text())


def test_the_result_holds_both_paths_and_the_run_context(result: dict) -> None:
    assert [p["path"] for p in result["paths"]] == ["reference", "ftq"]
    assert result["gpu"] == "cpu" and result["shape"] == "tiny"
    assert (result["batch"], result["steps"], result["warmup"]) == (16, STEPS, 1)
    assert set(result["versions"]) >= {"torch", "transformers", "trl", "peft", "bitsandbytes"}
    for path in result["paths"]:
        assert PATH_KEYS <= set(path), PATH_KEYS - set(path)
        assert path["peak_gb"] is None and path["mfu"] is None  # CPU: no GPU memory, no MFU


def test_each_path_counts_real_tokens(result: dict) -> None:
    for path in result["paths"]:
        assert len(path["per_step"]) == STEPS
        assert all(step["tokens"] > 0 and step["loss_tokens"] > 0 for step in path["per_step"])
        assert path["timed_tokens"] == sum(step["tokens"] for step in path["per_step"][1:])
        # Rows of 170-182 tokens, padded to the longest of each batch of 16.
        assert 170 * 16 <= path["tokens_per_step"] <= path["padded_tokens_per_step"] <= 182 * 16
        assert path["tokens_per_s"] > 0 and path["step_s"] > 0


def test_reference_and_ftq_train_on_the_same_batches_with_the_same_loss(result: dict) -> None:
    reference, ftq = result["paths"]
    assert ftq["same_batches"] == STEPS
    assert len(reference["losses"]) == len(ftq["losses"]) == STEPS
    assert reference["losses"][0] == pytest.approx(ftq["losses"][0], abs=LOSS_TOLERANCE)
    assert ftq["max_loss_diff"] <= LOSS_TOLERANCE
    assert ftq["ratio"] == pytest.approx(ftq["tokens_per_s"] / reference["tokens_per_s"], abs=1e-3)
    steady = [p["tokens_per_step"] / p["step_s_median"] for p in (ftq, reference)]
    assert ftq["ratio_median"] == pytest.approx(steady[0] / steady[1], abs=1e-3)
