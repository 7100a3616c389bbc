"""Rate limits shared by every ingest process and machine of a region.

With ARCHIVA_CACHE_URL set, the token buckets of the tenant and peer limits
(ARCHIVA_TENANT_RATE/BURST, ARCHIVA_PEER_RATE/BURST) live in Redis: one
Lua script reads, refills, takes and writes a bucket atomically, on
Redis's clock, so N processes on M machines share one limit instead of
each allowing the full rate.  Unset, each process keeps its own buckets
(ingest.policy.RateLimiter), as the embedded default always did.

A limiter outage never refuses mail: when Redis does not answer (within
`timeout`, so the event loop is held at most that long) the message is
allowed, the outage is logged, and Redis is left alone for `retry_after`
seconds before it is asked again (fail open).  Exchange retries what we
refuse with 4xx, but it cannot tell our limiter's trouble from a real
limit, and refusing every tenant's mail because a cache is down would turn
a cache outage into an ingest outage.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from ingest.policy import RateLimiter

log = logging.getLogger(__name__)

# KEYS[1]: the bucket; ARGV: rate per second, burst, cost.  A hash of
# tokens and the time they were counted; TIME is Redis's clock, the same
# for every client whatever their own clocks say.
BUCKET_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local held = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(held[1])
local ts = tonumber(held[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return allowed
"""


class SharedRateLimiter(RateLimiter):
    """A RateLimiter whose buckets are in Redis (same `allow`); fails open when Redis does not answer."""

    def __init__(
        self,
        url: str,
        name: str,
        rate: float,
        burst: float,
        *,
        prefix: str,
        timeout: float = 0.25,
        retry_after: float = 5.0,
    ):
        import redis

        super().__init__(rate, burst)
        self.name = name
        self.prefix = prefix
        self.retry_after = retry_after
        self.client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        self.script: Any = self.client.register_script(BUCKET_SCRIPT)
        self._down_until = 0.0
        self.failed_open = 0  # decisions made without Redis (for tests and logs)

    def key(self, key: object) -> str:
        return f"{self.prefix}:{self.name}:{key}"

    def allow(self, key: object, cost: float = 1.0) -> bool:
        if self.rate <= 0:
            return True
        if time.monotonic() < self._down_until:
            self.failed_open += 1
            return True
        import redis

        try:
            return bool(self.script(keys=[self.key(key)], args=[self.rate, self.burst, cost]))
        except redis.RedisError as exc:
            self._down_until = time.monotonic() + self.retry_after
            self.failed_open += 1
            log.warning(
                "shared rate limiter %s unreachable (%s): allowing mail without a limit for %.0f s",
                self.name,
                exc,
                self.retry_after,
            )
            return True


def rate_limiter(
    name: str, rate: float, burst: float, *, cache_url: str, prefix: str, timeout: float = 0.25
) -> RateLimiter:
    """Shared through Redis when a cache is configured, else this process's own buckets."""
    if cache_url and rate > 0 and math.isfinite(rate):
        return SharedRateLimiter(cache_url, name, rate, burst, prefix=prefix, timeout=timeout)
    return RateLimiter(rate, burst)
