"""Resuming is exact: the newest complete checkpoint is chosen, and a resumed tiny-model run ends with the
same adapter weights as an uninterrupted run with the same seed."""

from pathlib import Path
from typing import Any

import pytest

from shared.spec import JobSpec
from worker.progress import COMPLETE_MARKER, last_complete_checkpoint


def test_a_checkpoint_whose_save_crashed_midway_is_never_resumed_from(tmp_path: Path) -> None:
    for step, complete in ((3, True), (6, True), (9, False)):  # the save of step 9 died before its marker
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / COMPLETE_MARKER).touch()

    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-6"
    assert last_complete_checkpoint(tmp_path / "none-yet") is None


class Reporter:
    """Keeps the steps it is told and the log lines; answers "drain" once training reaches `drain_at`."""

    def __init__(self, drain_at: int | None = None) -> None:
        self.drain_at = drain_at
        self.steps: list[int] = []
        self.logs: list[str] = []

    def progress(self, progress: dict[str, Any]) -> str:
        self.steps.append(progress["step"])
        return "drain" if self.drain_at is not None and progress["step"] >= self.drain_at else "continue"

    def log(self, message: str, data: dict[str, Any]) -> None:
        self.logs.append(message)

    def __getattr__(self, _name: str) -> Any:
        return lambda *args, **kwargs: True


@pytest.mark.training
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(
    tiny_model: Path, train_file: Path, local_root: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file
    from torch.testing import assert_close

    from worker.training import train

    spec = JobSpec.model_validate(
        {
            "base_model": str(tiny_model),
            "dataset": {"id": str(train_file)},
            "hyperparameters": {"batch_size": 8, "max_length": 320, "max_steps": 6, "save_steps": 100, "seed": 7},
        }
    )
    straight = train(spec, tmp_path / "straight", [local_root], Reporter(), job_id="a", interval_s=0.0)
    first = train(spec, tmp_path / "resumed", [local_root], Reporter(drain_at=3), job_id="b", interval_s=0.0)
    resuming = Reporter()
    second = train(spec, tmp_path / "resumed", [local_root], resuming, job_id="b", interval_s=0.0)

    assert "resuming from checkpoint-3" in resuming.logs and resuming.steps[0] == 3, "it resumed, not restarted"
    assert first.drained and (tmp_path / "resumed" / "checkpoints" / "checkpoint-3" / COMPLETE_MARKER).exists()
    assert not straight.stopped and not second.stopped
    expected = load_file(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "adapter" / "adapter_model.safetensors")
    assert expected.keys() == resumed.keys()
    for name, tensor in expected.items():
        # TRL trains the LoRA weights in bf16 on a 4-bit base; on resume PEFT loads them upcast to fp32
        # (autocast_adapter_dtype), so the two runs agree up to a few bf16 roundings, not bit for bit.
        assert_close(resumed[name].float(), tensor.float(), rtol=1.6e-2, atol=2e-4, msg=lambda m, n=name: f"{n}: {m}")
    assert any(t.abs().sum() > 0 for n, t in expected.items() if "lora_B" in n), "training moved the adapter"
