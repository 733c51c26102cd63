"""A job's tokens: its owner's stored ones, or None so each client falls back to the worker's environment
(`HF_TOKEN`, `WANDB_API_KEY`: the team's defaults). They are handed to the clients as arguments, never put
in an environment, a command line, a log line or the training arguments."""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Credentials:
    """The tokens one job runs with (hidden from repr, so a logged object shows none)."""

    hf_token: str | None = field(default=None, repr=False)
    wandb_api_key: str | None = field(default=None, repr=False)


def credentials_for(owner_id: str) -> Credentials:
    """The owner's stored tokens, decrypted (a token the server key cannot open fails the job)."""
    # Imported here: `Credentials` alone (what the trainer takes) needs no database or cipher.
    from shared.db import session_scope
    from shared.settings import get_settings
    from shared.vault import read_secrets

    with session_scope() as session:
        tokens = read_secrets(session=session, settings=get_settings(), user_id=owner_id)
    return Credentials(hf_token=tokens.get("hf_token"), wandb_api_key=tokens.get("wandb_api_key"))
