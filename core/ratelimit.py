"""Per-API-key request rate limits: a token bucket per key, in Redis when there is one, else in-process.

In Redis the bucket is one hash per key, updated by a Lua script with Redis's own clock, so every API
process behind a load balancer draws from the same bucket. Without `redis_url` (a single `ftserve api`
on embedded defaults) each process keeps its own buckets. If Redis cannot be reached the request is let
through (fail open) and a warning logged: the limit protects capacity, and an outage of the queue must not
also take the read API down.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("ftserve.ratelimit")

BUCKET_PREFIX = "ftserve:ratelimit:"

# KEYS[1] bucket; ARGV: refill per second, burst. Returns {allowed (0/1), tokens left as a string}.
_TOKEN_BUCKET_LUA = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(tokens)}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int  # requests per minute
    remaining: int  # whole requests left in the bucket now
    retry_after_s: int  # when refused: seconds until one request is allowed
    reset_s: float  # seconds until the bucket is full again


class RateLimiter:
    """`await limiter.check(bucket_id)` takes one token. `bucket_id` is a hash of the API key, never the key."""

    def __init__(self, *, per_minute: int, burst: int, redis_url: str | None = None) -> None:
        self.per_minute = per_minute
        self.burst = burst
        self.rate = per_minute / 60.0
        self.redis_url = redis_url
        self._redis: Any = None
        self._script: Any = None
        # bucket -> (tokens, monotonic time). No lock: nothing awaits between the read and the write.
        self._local: dict[str, tuple[float, float]] = {}

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    def _decision(self, allowed: bool, tokens: float) -> Decision:
        return Decision(
            allowed=allowed,
            limit=self.per_minute,
            remaining=max(0, math.floor(tokens)),
            retry_after_s=0 if allowed else max(1, math.ceil((1 - tokens) / self.rate)),
            reset_s=max(0.0, (self.burst - tokens) / self.rate),
        )

    def _take_local(self, bucket: str) -> Decision:
        now = time.monotonic()
        tokens, at = self._local.get(bucket, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        allowed = tokens >= 1
        if allowed:
            tokens -= 1
        self._local[bucket] = (tokens, now)
        if len(self._local) > 100_000:  # forget the fullest buckets' owners: a full bucket is the default
            self._local = {k: v for k, v in self._local.items() if v[0] < self.burst - 1}
        return self._decision(allowed, tokens)

    async def check(self, bucket: str) -> Decision | None:
        """None when limits are off."""
        if not self.enabled:
            return None
        if self.redis_url is None:
            return self._take_local(bucket)
        try:
            if self._redis is None:
                import redis.asyncio as aioredis

                self._redis = aioredis.Redis.from_url(
                    self.redis_url, socket_timeout=1, socket_connect_timeout=1
                )
                self._script = self._redis.register_script(_TOKEN_BUCKET_LUA)
            allowed, tokens = await self._script(keys=[BUCKET_PREFIX + bucket], args=[self.rate, self.burst])
            return self._decision(bool(int(allowed)), float(tokens))
        except Exception as exc:  # noqa: BLE001 (any Redis failure: let the request through, say so)
            logger.warning("rate limit not applied: redis unreachable (%s)", type(exc).__name__)
            return None

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
