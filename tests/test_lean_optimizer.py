"""The lean bitsandbytes optimizer step computes exactly what bitsandbytes' own step computes: with 32-bit state in
one update over each group's tensors laid end to end, with 8-bit state per tensor; and its checkpoints resume
exactly, in the lean step or in bitsandbytes' own."""

import io
from collections.abc import Callable
from typing import Any

import bitsandbytes as bnb
import bitsandbytes.functional as bnbf
import pytest
import torch

from worker.lean_optimizer import lean_optimizer_step

SHAPES = [(64, 32), (32, 64), (300, 400), (40,)]  # LoRA-like pairs, one above the 8-bit size floor, a bias


def make_params(dtype: torch.dtype) -> list[torch.nn.Parameter]:
    """The same starting parameters on every call."""
    generator = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator).to(dtype)) for shape in SHAPES]


def make_grads(steps: int, dtype: torch.dtype) -> list[list[torch.Tensor]]:
    """Each step's gradients, the same on every call."""
    generator = torch.Generator().manual_seed(1)
    return [[torch.randn(shape, generator=generator).to(dtype) for shape in SHAPES] for _ in range(steps)]


def make_optimizer(name: str, params: list[torch.nn.Parameter], *, lean: bool) -> Any:
    """Two groups, as the Trainer makes them (weight decay on the matrices, none on the bias)."""
    groups = [{"params": params[:3], "weight_decay": 0.001}, {"params": params[3:], "weight_decay": 0.0}]
    optimizer = getattr(bnb.optim, name)(groups, lr=1e-2)
    if lean:
        assert lean_optimizer_step(optimizer)
    return optimizer


def train(optimizer: Any, params: list[torch.nn.Parameter], grads: list[list[torch.Tensor]]) -> None:
    for step_grads in grads:
        for param, grad in zip(params, step_grads, strict=True):
            param.grad = grad.clone()
        optimizer.step()


def snapshot(params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    return [param.detach().clone() for param in params]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["PagedAdamW32bit", "PagedAdamW8bit", "AdamW8bit"])
def test_the_lean_step_updates_exactly_as_bitsandbytes_does(name: str, dtype: torch.dtype) -> None:
    grads = make_grads(5, dtype)
    runs = []
    for lean in (False, True):
        params = make_params(dtype)
        train(make_optimizer(name, params, lean=lean), params, grads)
        runs.append(snapshot(params))

    assert same(runs[0], runs[1])
    assert not torch.equal(runs[1][0], make_params(dtype)[0]), "the parameters moved"


def count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Count calls of a bitsandbytes.functional update (the lean step looks it up at call time)."""
    calls: list[int] = []
    original: Callable[..., Any] = getattr(bnbf, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(bnbf, name, counted)
    return calls


def test_32bit_state_is_one_update_a_group_over_state_laid_end_to_end(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_calls(monkeypatch, "optimizer_update_32bit")
    bnb_params = make_params(torch.float32)
    train(make_optimizer("PagedAdamW32bit", bnb_params, lean=False), bnb_params, make_grads(3, torch.float32))
    bnb_calls = len(calls)
    params = make_params(torch.float32)
    optimizer = make_optimizer("PagedAdamW32bit", params, lean=True)

    train(optimizer, params, make_grads(3, torch.float32))

    assert (bnb_calls, len(calls) - bnb_calls) == (4 * 3, 2 * 3), "one update per group a step, not per tensor"
    storages = {optimizer.state[param]["state1"].untyped_storage().data_ptr() for param in params[:3]}
    assert len(storages) == 1, "the group's per-tensor state entries are views of one buffer"
    assert [optimizer.state[param]["step"] for param in params] == [3, 3, 3, 3]


def test_8bit_state_keeps_one_update_a_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    params = make_params(torch.float32)
    optimizer = make_optimizer("PagedAdamW8bit", params, lean=True)
    blockwise = count_calls(monkeypatch, "optimizer_update_8bit_blockwise")
    flat = count_calls(monkeypatch, "optimizer_update_32bit")

    train(optimizer, params, make_grads(2, torch.float32))

    # Tensors under bitsandbytes' 8-bit size floor keep 32-bit state, each updated on its own as before.
    assert (len(blockwise), len(flat)) == (2, 6)


def roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state as a checkpoint stores and loads it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded: dict[str, Any] = torch.load(buffer, weights_only=False)
    return loaded


@pytest.mark.parametrize(("saved_by", "resumed_by"), [("lean", "lean"), ("lean", "bnb"), ("bnb", "lean")])
def test_a_checkpoint_resumes_exactly_whichever_step_saved_or_loads_it(saved_by: str, resumed_by: str) -> None:
    grads = make_grads(6, torch.float32)
    straight = make_params(torch.float32)
    train(make_optimizer("PagedAdamW32bit", straight, lean=False), straight, grads)

    params = make_params(torch.float32)
    first = make_optimizer("PagedAdamW32bit", params, lean=saved_by == "lean")
    train(first, params, grads[:3])
    state = roundtrip(first.state_dict())
    resumed = [torch.nn.Parameter(tensor) for tensor in snapshot(params)]
    second = make_optimizer("PagedAdamW32bit", resumed, lean=resumed_by == "lean")
    second.load_state_dict(state)
    train(second, resumed, grads[3:])

    assert same(snapshot(resumed), snapshot(straight))


def test_other_optimizers_are_left_alone() -> None:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])

    assert lean_optimizer_step(optimizer) is False
    assert "step" not in vars(optimizer)
