"""A token bucket per user: `FTQ_RATE_LIMIT` requests a minute on average, bursts of `FTQ_RATE_BURST`.

It lives in the API process, which is right for ftq's one API process per box; API replicas behind a
balancer would each allow the rate.
"""

import math
import threading
import time
from dataclasses import dataclass, field

from shared.errors import FtqError


class RateLimited(FtqError):
    """Too many requests from one user; retry after the `Retry-After` seconds."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, retry_after_s: float) -> None:
        seconds = max(1, math.ceil(retry_after_s))
        super().__init__(f"too many requests; retry in {seconds}s")
        self.headers = {"Retry-After": str(seconds)}


@dataclass
class TokenBucket:
    """Refills `rate_per_s` tokens a second up to `burst`; each request takes one."""

    rate_per_s: float
    burst: int
    tokens: dict[str, tuple[float, float]] = field(default_factory=dict)  # user -> (tokens, at)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, user_id: str, now: float | None = None) -> None:
        """Spend a token of `user_id`, or raise RateLimited with the wait until the next one."""
        now = time.monotonic() if now is None else now
        with self.lock:
            tokens, at = self.tokens.get(user_id, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate_per_s)
            if tokens < 1.0:
                self.tokens[user_id] = (tokens, now)
                raise RateLimited((1.0 - tokens) / self.rate_per_s)
            self.tokens[user_id] = (tokens - 1.0, now)
