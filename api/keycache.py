"""API keys checked recently, so that the polled reads do not look their key up on every request.

A hit saves a read its key's query (a third of what a poll cost). The price is that a key revoked, or a user made
or unmade admin, reaches the reads only when the entry expires (`FTQ_KEY_CACHE_TTL`, 5 s by default); routes that
write or start work check the key every time. Unknown keys are never cached, so a new key works at once and a flood
of wrong keys cannot fill the cache. It is used from the event loop only (the read routes are `async def`).
"""

import time
from dataclasses import dataclass, field

from shared.auth import KeyOwner


@dataclass
class KeyCache:
    """Key hash -> its owner, for `ttl_s` seconds after the check; at most `max_entries`, expired ones dropped first."""

    ttl_s: float
    max_entries: int = 10_000
    entries: dict[str, tuple[KeyOwner, float]] = field(default_factory=dict)  # hash -> (owner, expires at)

    def get(self, key_hash: str, now: float | None = None) -> KeyOwner | None:
        """The owner checked within `ttl_s`, or None."""
        entry = self.entries.get(key_hash)
        if entry is None:
            return None
        owner, expires_at = entry
        if (time.monotonic() if now is None else now) >= expires_at:
            del self.entries[key_hash]
            return None
        return owner

    def put(self, key_hash: str, owner: KeyOwner, now: float | None = None) -> None:
        """Remember a key just checked."""
        if self.ttl_s <= 0:
            return
        now = time.monotonic() if now is None else now
        if len(self.entries) >= self.max_entries:
            self._make_room(now)
        self.entries[key_hash] = (owner, now + self.ttl_s)

    def _make_room(self, now: float) -> None:
        # Expired entries go first; if none had expired, the oldest half goes (dicts keep insertion order).
        self.entries = {h: entry for h, entry in self.entries.items() if entry[1] > now}
        if len(self.entries) >= self.max_entries:
            self.entries = dict(list(self.entries.items())[len(self.entries) // 2 :])
