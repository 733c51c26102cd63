"""Users' tokens (Hugging Face, W&B), encrypted at rest with the server's key (Fernet, from `cryptography`).

Only workers decrypt them, in the training process of a job of their owner. The API stores and deletes
them and says whether each is set, never what it is.
"""

import os
from datetime import datetime
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from shared.errors import JobFailure
from shared.models import UserSecret, utcnow
from shared.settings import Settings

SECRET_NAMES = ("hf_token", "wandb_api_key")


def _key_file(settings: Settings) -> Path:
    return settings.data_path / "secret.key"


def ensure_key_file(settings: Settings) -> None:
    """Make the data dir's server key (mode 0600) unless `FTQ_SECRET_KEY` is set or the file exists."""
    if settings.secret_key is not None:
        return
    path = _key_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another process made it first; both use that one
    with os.fdopen(fd, "wb") as handle:
        handle.write(Fernet.generate_key())


def server_cipher(settings: Settings) -> MultiFernet:
    """The server's cipher: `FTQ_SECRET_KEY` (newest key first, older ones still decrypt), or the key file."""
    if settings.secret_key is not None:
        raw = settings.secret_key.get_secret_value()
    else:
        ensure_key_file(settings)
        raw = _key_file(settings).read_text()
    keys = [part.strip() for part in raw.replace("\n", ",").split(",") if part.strip()]
    try:
        return MultiFernet([Fernet(key) for key in keys])
    except (ValueError, TypeError) as exc:
        raise RuntimeError("FTQ_SECRET_KEY must be one or more Fernet keys, comma-separated") from exc


def store_secret(*, session: Session, settings: Settings, user_id: str, name: str, value: str) -> None:
    """Encrypt and keep (or replace) one of a user's tokens."""
    ciphertext = server_cipher(settings).encrypt(value.encode()).decode()
    row = session.get(UserSecret, (user_id, name))
    if row is None:
        session.add(UserSecret(user_id=user_id, name=name, ciphertext=ciphertext))
    else:
        row.ciphertext, row.updated_at = ciphertext, utcnow()
    session.flush()


def delete_secret(*, session: Session, user_id: str, name: str) -> None:
    """Forget one of a user's tokens (nothing happens if it was not set)."""
    session.execute(delete(UserSecret).where(UserSecret.user_id == user_id, UserSecret.name == name))


def secrets_set(*, session: Session, user_id: str) -> dict[str, datetime]:
    """Which of a user's tokens are stored, and when each was last set."""
    rows = session.execute(select(UserSecret.name, UserSecret.updated_at).where(UserSecret.user_id == user_id))
    return {name: updated for name, updated in rows}  # noqa: C416 (rows are Row objects)


def read_secrets(*, session: Session, settings: Settings, user_id: str) -> dict[str, str]:
    """A user's tokens in the clear (workers only); a token the server key cannot open fails the job."""
    cipher = server_cipher(settings)
    tokens = {}
    for row in session.scalars(select(UserSecret).where(UserSecret.user_id == user_id)):
        try:
            tokens[row.name] = cipher.decrypt(row.ciphertext.encode()).decode()
        except InvalidToken as exc:
            raise JobFailure(
                f"the stored {row.name} cannot be decrypted with the server's key (was FTQ_SECRET_KEY changed?);"
                " set it again with PUT /me/secrets",
                code="secret_unreadable",
                param=row.name,
            ) from exc
    return tokens
