"""ftq: a self-hosted fine-tuning job service. `from ftq import Client` for the Python client."""

from typing import Any

__version__ = "0.1.0"
__all__ = ["APIError", "Client"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so `ftq up` and the workers do not load the client's models.
    if name in __all__:
        from ftq import client

        return getattr(client, name)
    raise AttributeError(f"module 'ftq' has no attribute {name!r}")
