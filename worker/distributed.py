"""One job on several GPUs: `worker.launch` starts one `worker.runner` per GPU (a rank) with torchrun's environment
(RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), and the Trainer trains them data-parallel.

Rank 0 speaks for the job: it reports progress, records checkpoints, logs to W&B and pushes to the Hub. Every
decision that changes what the ranks do next (report now, drain, stop) is taken by rank 0 and shared with all of
them at the same step, or one rank would wait forever in a collective the others never join.
"""

from datetime import timedelta
from typing import Any

import torch

from shared.attempts import CONTINUE, DRAIN, STOP
from worker.ranks import world_size

DIRECTIVES = (CONTINUE, DRAIN, STOP)
DDP_TIMEOUT_S = 1800


class RankSync:
    """Shares rank 0's decisions with every rank and sums counts over ranks; with one rank, each is the identity."""

    def __init__(self) -> None:
        self._control: Any = None

    def join(self, device: str) -> None:
        """With several ranks, join the job's process group now (NCCL on GPUs, gloo on the CPU), so that the ranks can
        agree before the Trainer exists; the Trainer's accelerate state then uses this group."""
        if world_size() == 1 or torch.distributed.is_initialized():
            return
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
        # The Trainer's own timeout for collectives (TrainingArguments.ddp_timeout), not NCCL's shorter default.
        timeout = timedelta(seconds=DDP_TIMEOUT_S)
        torch.distributed.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo", timeout=timeout)

    @property
    def active(self) -> bool:
        """Whether there are other ranks to agree with."""
        return world_size() > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()

    def _control_group(self) -> Any:
        # A gloo group on the host: agreeing each step is a loopback message, never a wait for the GPU (a broadcast
        # on the NCCL group would need a device tensor read back on the host). Created on first use, which every
        # rank reaches at the same point (the start of training).
        if self._control is None:
            self._control = torch.distributed.new_group(backend="gloo")
        return self._control

    def share(self, value: int) -> int:
        """Rank 0's `value`, on every rank."""
        if not self.active:
            return value
        box = torch.tensor([value], dtype=torch.int64)
        torch.distributed.broadcast(box, src=0, group=self._control_group())
        return int(box.item())

    def least(self, value: int | None) -> int | None:
        """The smallest of every rank's `value` (None on every rank stays None): the free memory every rank plans
        from, so that all of them choose the same micro-batch and the same memory savings."""
        if not self.active or value is None:
            return value
        box = torch.tensor([value], dtype=torch.int64)
        torch.distributed.all_reduce(box, op=torch.distributed.ReduceOp.MIN, group=self._control_group())
        return int(box.item())

    def share_directive(self, directive: str) -> str:
        """Rank 0's directive (continue, drain or stop), on every rank."""
        return DIRECTIVES[self.share(DIRECTIVES.index(directive))]

    def total(self, counts: torch.Tensor) -> torch.Tensor:
        """`counts` summed over the ranks, where they are (on the GPUs through NCCL, on the CPU through gloo)."""
        if self.active:
            torch.distributed.all_reduce(counts)
        return counts


def leave_process_group() -> None:
    """Leave the job's process groups once the attempt is over, so that NCCL frees its communicators before the
    process exits instead of warning that they leak. The runner calls it last, once the trainer is gone: its DDP
    objects hold the groups, and tearing them down after the groups have been destroyed can hang a rank."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
