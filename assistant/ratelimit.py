"""Rate limiting per key: a token bucket for each key (an API key's id, or a client address).

    limiter = RateLimiter(per_minute=600, burst=60)
    limiter.check(key_id)   # raises RateLimited (429) with `retry_after_s` when the key is over its limit

Each key's bucket holds up to `burst` tokens and refills at `per_minute / 60` tokens a second; a request takes
one token. A key may send `burst` requests at once, then `per_minute` a minute on average. `per_minute=0` turns
limiting off. The limit holds per process: N replicas allow a key N times as much.

Memory is bounded: buckets live in an LRU table; a bucket idle long enough to be full again is forgotten (a new
one is the same full bucket), and past `max_keys` the least recently seen key is forgotten even if it was not
full (that key then starts afresh with a full burst). Thread-safe: one lock around a few arithmetic operations.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from .errors import FinragError, RateLimited

_EPSILON = 1e-9  # float refills (1.5 s × 2/3 a second) land a hair under a whole token


class RateLimiter:
    def __init__(
        self, per_minute: float, burst: int, *, max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_minute < 0:
            raise ValueError(f"per_minute must be 0 (off) or more, not {per_minute}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, not {max_keys}")
        self.per_minute = per_minute
        self.burst = burst
        self.max_keys = max_keys
        self._rate = per_minute / 60.0  # tokens a second
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, when), oldest first
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    def __len__(self) -> int:
        """Keys remembered now."""
        with self._lock:
            return len(self._buckets)

    def check(self, key: str) -> None:
        """Take a token from `key`'s bucket, or raise RateLimited saying when the next one is there."""
        if not self.enabled:
            return
        with self._lock:
            now = self._clock()
            tokens = self._tokens(key, now)
            if tokens >= 1.0 - _EPSILON:
                self._buckets[key] = (tokens - 1.0, now)
                self._buckets.move_to_end(key)
                self._forget(now)
                return
            self._buckets[key] = (tokens, now)
            self._buckets.move_to_end(key)
            self._forget(now)
        wait = (1.0 - tokens) / self._rate
        raise RateLimited(
            f"too many requests: this key may send {self.per_minute:g} a minute (bursts of {self.burst}); "
            f"retry in {whole_seconds(wait)} s",
            retry_after_s=wait,
        )

    def _tokens(self, key: str, now: float) -> float:
        """The bucket's tokens at `now` (a key not remembered has a full bucket)."""
        found = self._buckets.get(key)
        if found is None:
            return float(self.burst)
        tokens, when = found
        return min(float(self.burst), tokens + max(0.0, now - when) * self._rate)

    def _forget(self, now: float) -> None:
        """Drop the oldest buckets while they have refilled (forgetting them changes nothing), and any past
        `max_keys`."""
        while self._buckets:
            oldest, (tokens, when) = next(iter(self._buckets.items()))
            full = tokens + max(0.0, now - when) * self._rate >= self.burst - _EPSILON
            if len(self._buckets) <= self.max_keys and not full:
                return
            del self._buckets[oldest]


def retry_after_headers(error: FinragError) -> Mapping[str, str]:
    """`Retry-After` (whole seconds, rounded up) for a RateLimited error; nothing for any other error."""
    if isinstance(error, RateLimited):
        return {"Retry-After": str(whole_seconds(error.retry_after_s))}
    return {}


def whole_seconds(seconds: float) -> int:
    """`seconds` rounded up to a whole second, at least 1 (what Retry-After takes)."""
    return max(1, math.ceil(seconds - 1e-6))
