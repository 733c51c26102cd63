"""How an unexpected exception in validation or training becomes a job's error."""

from shared.errors import FtqError, JobFailure


def classify(exc: BaseException) -> FtqError:
    """Turn an unexpected exception into the job's error."""
    if isinstance(exc, FtqError):
        return exc
    name = type(exc).__name__
    if "OutOfMemoryError" in name:
        return JobFailure(f"out of memory: {exc}", code="out_of_memory", param="hyperparameters.batch_size")
    return JobFailure(f"{name}: {exc}", code="training_error")
