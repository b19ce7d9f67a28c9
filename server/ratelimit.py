"""Per-API-key rate limits: a token bucket per key for requests per minute and one for
tokens per minute (`--rate-limit-rpm`, `--rate-limit-tpm`).

A bucket holds up to a minute's allowance and refills continuously; a request takes its
cost or gets 429 with `Retry-After` (the seconds until the bucket holds the cost). Requests
are charged when they arrive; tokens once the prompt is tokenized, as prompt tokens plus
the completion tokens the request may generate (what OpenAI's limits charge too: unused
completion tokens are not given back).

The buckets live in the process (`--rate-limit-store memory`, the default: each replica
limits on its own) or in Redis (`redis://...`: every replica draws from the same bucket;
one Lua script reads, refills and takes atomically on Redis' clock). If Redis cannot be
reached the request is let through and `longserve_rate_limit_store_errors_total` counts
it: an outage of the limiter must not become an outage of the server.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time

from server import metrics
from server.errors import RateLimited

logger = logging.getLogger(__name__)

ANONYMOUS = "anonymous"  # the one bucket owner when the server has no API keys


def key_id(api_key: str) -> str:
    """What identifies a key in buckets, metrics and logs: never the key itself."""
    return "key-" + hashlib.sha256(api_key.encode()).hexdigest()[:12]


def refill(level: float, stamp: float, now: float, capacity: float, per_second: float):
    return min(capacity, level + max(0.0, now - stamp) * per_second)


class MemoryBuckets:
    """Buckets in this process (monotonic clock)."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}

    async def take(self, name: str, capacity: float, per_second: float, cost: float) -> float:
        """Take `cost` and return 0, or take nothing and return the seconds to wait."""
        now = time.monotonic()
        level, stamp = self._buckets.get(name, (capacity, now))
        level = refill(level, stamp, now, capacity, per_second)
        wait = 0.0 if level >= cost else (cost - level) / per_second
        self._buckets[name] = (level - cost if wait == 0 else level, now)
        return wait


# KEYS[1]: the bucket; ARGV: capacity, refill per second, cost. Returns the wait as a
# string (Redis turns Lua numbers into integers). TIME before a write is allowed since
# Redis 5 (scripts replicate their effects).
_TAKE = """
local capacity, rate, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local level = tonumber(redis.call('HGET', KEYS[1], 'level') or capacity)
local stamp = tonumber(redis.call('HGET', KEYS[1], 'stamp') or now)
level = math.min(capacity, level + math.max(0, now - stamp) * rate)
local wait = 0
if level >= cost then level = level - cost else wait = (cost - level) / rate end
redis.call('HSET', KEYS[1], 'level', tostring(level), 'stamp', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / rate) + 1)
return tostring(wait)
"""


class RedisBuckets:
    """Buckets in Redis, shared by every replica pointed at the same database."""

    PREFIX = "longserve:ratelimit:"

    def __init__(self, url: str) -> None:
        import redis.asyncio

        self._client = redis.asyncio.Redis.from_url(url, socket_timeout=2,
                                                    socket_connect_timeout=2)
        self._take = self._client.register_script(_TAKE)

    async def take(self, name: str, capacity: float, per_second: float, cost: float) -> float:
        return float(await self._take(keys=[self.PREFIX + name],
                                      args=[capacity, per_second, cost]))


def make_buckets(spec: str) -> MemoryBuckets | RedisBuckets:
    if spec == "memory":
        return MemoryBuckets()
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisBuckets(spec)
    raise ValueError(f"takes `memory` or redis://HOST:PORT[/DB], got {spec!r}")


class RateLimiter:
    """Requests and tokens per minute per key; a limit of 0 is no limit."""

    def __init__(self, rpm: int = 0, tpm: int = 0, store: str = "memory") -> None:
        self.limits = {"requests": rpm, "tokens": tpm}
        self.buckets = make_buckets(store) if rpm or tpm else None

    async def take(self, key: str, kind: str, cost: int) -> None:
        """Charge `cost` requests or tokens to `key`, or raise RateLimited (429)."""
        limit = self.limits[kind]
        if not limit:
            return
        flag = "--rate-limit-rpm" if kind == "requests" else "--rate-limit-tpm"
        if cost > limit:  # never fits: waiting would not help
            metrics.RATE_LIMITED.labels(key=key, limit=kind).inc()
            raise RateLimited(f"this request needs {cost} {kind}, more than the {limit} per "
                              f"minute this API key may use ({flag}); ask for fewer")
        try:
            wait = await self.buckets.take(f"{key}:{kind}", limit, limit / 60, cost)
        except Exception as exc:  # noqa: BLE001 - the limiter's store is down: let it pass
            metrics.RATE_LIMIT_STORE_ERRORS.inc()
            logger.warning("rate limit store unavailable, request let through: %s", exc)
            return
        if wait > 0:
            metrics.RATE_LIMITED.labels(key=key, limit=kind).inc()
            raise RateLimited(
                f"rate limit reached: {limit} {kind} per minute for this API key ({flag}); "
                f"this request needs {cost}; retry after the Retry-After delay",
                headers={"Retry-After": str(max(1, math.ceil(wait)))})
