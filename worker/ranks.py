"""Which rank of a job this process is, from the environment `worker.launch` (or torchrun) sets. No torch at import:
the Celery task's process imports this module (through worker.runner) and must never load torch; the collectives
are in worker.distributed."""

import os

# What a collective raises on the ranks left behind when a peer process dies (gloo's TCP pairs; NCCL raises
# torch.distributed.DistError subclasses).
PEER_LOST_SIGNS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def world_size() -> int:
    """How many ranks train this job (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (0 without a launcher)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's GPU among those visible to the job."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_rank() -> bool:
    """Whether this process speaks for the job (always, with one rank)."""
    return rank() == 0


def lost_a_peer(exc: BaseException) -> bool:
    """Whether a rank's error only says that another rank of its job went away (that rank's exit tells why)."""
    if world_size() == 1:
        return False
    import torch.distributed  # only a training process gets here, with torch already loaded

    return isinstance(exc, torch.distributed.DistError) or (
        isinstance(exc, RuntimeError) and any(sign in str(exc) for sign in PEER_LOST_SIGNS)
    )
