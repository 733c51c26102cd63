"""How an unexpected exception in validation or training becomes a job's error."""

from shared.errors import FtqError, JobFailure


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA (torch.OutOfMemoryError) or host (MemoryError) out-of-memory error."""
    return isinstance(exc, MemoryError) or "OutOfMemoryError" in type(exc).__name__


def out_of_memory_failure(detail: str) -> JobFailure:
    """The job's error once out-of-memory has happened again after a retry."""
    return JobFailure(
        f"out of memory, twice with the same settings ({detail}); lower batch_size or max_length",
        code="out_of_memory",
        param="hyperparameters.batch_size",
    )


def classify(exc: BaseException) -> FtqError:
    """Turn an unexpected exception into the job's error."""
    if isinstance(exc, FtqError):
        return exc
    if is_out_of_memory(exc):
        return out_of_memory_failure(str(exc)[:200])
    return JobFailure(f"{type(exc).__name__}: {exc}", code="training_error")
