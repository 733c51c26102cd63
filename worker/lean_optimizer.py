"""A bitsandbytes optimizer step with the same arithmetic and less host work.

bitsandbytes 0.50 steps each parameter on its own: per tensor it builds a config, prefetches the paged state,
launches one update kernel and (on CUDA) waits for it. A LoRA adapter of Llama-3.1-8B has 256 tensors, so that
is 256 launches and 256 waits a step, about 20 ms of host time while the GPU idles. The lean step:

- never waits per parameter: each update is a kernel queued on the one stream, in the same order, so nothing
  reads a result early (paged state is synchronized once at the end, as bitsandbytes does after prefetching);
- with 32-bit state, updates each parameter group in one kernel over its tensors laid end to end. The 32-bit
  Adam-family update is elementwise (the same formula on each element with the group's scalars), so updating the
  concatenation computes exactly what updating each tensor does. The per-parameter state entries stay, as views
  of the flat state, so checkpoints keep bitsandbytes' layout and load back unchanged.

8-bit state is quantized in blocks that a concatenation would shift, so it keeps the per-parameter update.
"""

import itertools
import types
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class FlatState:
    """One parameter group's optimizer state laid end to end, and the per-parameter views bitsandbytes holds."""

    params: list[torch.nn.Parameter]
    sizes: list[int]
    state1: torch.Tensor
    state2: torch.Tensor
    views1: list[torch.Tensor]
    views2: list[torch.Tensor]

    def held_by(self, optimizer: Any, params: list[torch.nn.Parameter]) -> bool:
        """Whether the optimizer's state is still these views (a loaded checkpoint replaces them)."""
        if len(params) != len(self.params) or any(a is not b for a, b in zip(params, self.params, strict=True)):
            return False
        for param, view1, view2 in zip(params, self.views1, self.views2, strict=True):
            state = optimizer.state[param]
            if state.get("state1") is not view1 or state.get("state2") is not view2:
                return False
        return True


def _flat_eligible(optimizer: Any, config: dict[str, Any], params: list[torch.nn.Parameter]) -> bool:
    """Whether one kernel over the group computes what one per tensor does: Adam or AdamW (two states shaped like
    the parameter) in 32 bits, the same device, dtype, step and config for every tensor, and no per-tensor norm
    (`max_unorm`)."""
    import bitsandbytes as bnb

    if optimizer.optimizer_name != "adam" or not isinstance(optimizer, bnb.optim.optimizer.Optimizer2State):
        return False
    first = params[0]
    if len(params) < 2 or any(p.device != first.device or p.dtype != first.dtype for p in params):
        return False
    if config["optim_bits"] != 32 or config["max_unorm"] > 0.0:
        return False
    if optimizer.mng.index2config or optimizer.mng.pid2config:  # bitsandbytes' per-parameter overrides
        return False
    steps = {optimizer.state[p]["step"] if optimizer.state.get(p) else 0 for p in params}
    states = [optimizer.state[p].get("state1") for p in params if optimizer.state.get(p)]
    return len(steps) == 1 and all(s is not None and s.dtype == torch.float32 for s in states)


@torch.no_grad()
def _gather_flat_state(optimizer: Any, params: list[torch.nn.Parameter]) -> FlatState:
    """Lay the group's state end to end (zeros before the first step, the loaded values after a resume) and point
    each parameter's state at its slice."""
    sizes = [p.numel() for p in params]
    like = torch.empty(sum(sizes), dtype=params[0].dtype, device=params[0].device)
    flats = [optimizer.get_state_buffer(like, dtype=torch.float32) for _ in range(2)]
    views: list[list[torch.Tensor]] = [[], []]
    for param, start in zip(params, itertools.accumulate(sizes, initial=0), strict=False):
        state = optimizer.state[param]
        state.setdefault("step", 0)  # eligible parameters share one step: all have stepped alike, or none has
        for key, flat, held in zip(("state1", "state2"), flats, views, strict=True):
            view = flat[start : start + param.numel()].view_as(param)
            if key in state:
                view.copy_(state[key])
            state[key] = view
            held.append(view)
    return FlatState(params, sizes, flats[0], flats[1], views[0], views[1])


def _grad_of(param: torch.nn.Parameter) -> torch.Tensor:
    if param.grad is None:
        raise ValueError("a parameter without a gradient in a flat update")
    return param.grad


@torch.no_grad()
def _flat_update(optimizer: Any, config: dict[str, Any], gindex: int, params: list[torch.nn.Parameter]) -> None:
    """One bitsandbytes 32-bit update over the group's tensors laid end to end, copied back into each."""
    import bitsandbytes.functional as F

    flat = optimizer.ftq_flat.get(gindex)
    if flat is None or not flat.held_by(optimizer, params):
        flat = optimizer.ftq_flat[gindex] = _gather_flat_state(optimizer, params)
    for param in params:
        optimizer.state[param]["step"] += 1
    step = optimizer.state[params[0]]["step"]
    grad = torch.cat([_grad_of(p).reshape(-1) for p in params])
    data = torch.cat([p.data.reshape(-1) for p in params])
    if optimizer.is_paged:
        for state in (flat.state1, flat.state2):
            if getattr(state, "is_paged", False):
                F.prefetch_tensor(state)
    betas = config["betas"]
    F.optimizer_update_32bit(
        optimizer.optimizer_name,
        grad,
        data,
        flat.state1,
        betas[0],
        config["eps"],
        step,
        config["lr"],
        flat.state2,
        betas[1],
        betas[2] if len(betas) >= 3 else 0.0,
        config.get("alpha", 0.0),
        config["weight_decay"],
        1.0,
        None,
        max_unorm=0.0,
        skip_zeros=config["skip_zeros"],
    )
    torch._foreach_copy_([p.data.view(-1) for p in params], list(torch.split(data, flat.sizes)))


@torch.no_grad()
def _lean_step(self: Any, closure: Any = None) -> Any:
    """bitsandbytes 0.50's `Optimizer8bit.step` without a wait per parameter, and with 32-bit groups updated in
    one kernel each (see the module docstring)."""
    from bitsandbytes.utils import sync_gpu

    loss = None
    if closure is not None:
        with torch.enable_grad():
            loss = closure()
    if not self.initialized:
        self.check_overrides()
        self.to_gpu()
        self.initialized = True
    last = None
    for gindex, group in enumerate(self.param_groups):
        with_grads = [p for p in group["params"] if p.grad is not None]
        if not with_grads:
            continue
        last = with_grads[-1]
        config = self.get_config(gindex, 0, group)  # the group's: per-parameter overrides make it ineligible
        if _flat_eligible(self, config, with_grads):
            _flat_update(self, config, gindex, with_grads)
            continue
        for pindex, p in enumerate(group["params"]):
            if p.grad is None:
                continue
            if len(self.state[p]) == 0:
                self.init_state(group, p, gindex, pindex)
            self.prefetch_state(p)
            self.update_step(group, p, gindex, pindex)
    if self.is_paged and last is not None:
        sync_gpu(last)
    return loss


def lean_optimizer_step(optimizer: Any) -> bool:
    """Give a bitsandbytes optimizer the lean step; False (unchanged) for any other optimizer, or a bitsandbytes
    release whose step this was not checked against."""
    import bitsandbytes as bnb

    if not isinstance(optimizer, bnb.optim.optimizer.Optimizer8bit) or not bnb.__version__.startswith("0.50."):
        return False
    optimizer.ftq_flat = {}
    optimizer.step = types.MethodType(_lean_step, optimizer)
    return True
