"""Errors the service raises on purpose, each with a stable `code` clients can match on.

FtqError                  base: code, message, param
├── JobNotFound           404, unknown id (or not visible to the caller)
├── InvalidInput          422, a request field that cannot be accepted (path outside roots, ...)
└── JobFailure            a job ends `failed` with this code (bad data, missing model, ...)
"""


class FtqError(Exception):
    """An error with a stable machine-readable code and the request field at fault."""

    status_code = 400
    code = "error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param

    def as_dict(self) -> dict[str, str | None]:
        """The `error` object of the API."""
        return {"code": self.code, "message": self.message, "param": self.param}


class JobNotFound(FtqError):
    """No job with that id exists for this caller."""

    status_code = 404
    code = "not_found"


class InvalidInput(FtqError):
    """A request field that is well-formed but cannot be accepted."""

    status_code = 422
    code = "invalid_value"


class JobFailure(FtqError):
    """A job cannot go on; it ends `failed` with this code and param."""

    code = "job_failed"
