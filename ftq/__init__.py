"""ftq: a self-hosted fine-tuning job service."""

__version__ = "0.1.0"
