"""Token buckets and the per-key rate limiter, in process and on a real Redis server."""

from __future__ import annotations

import asyncio

import pytest

from server.errors import RateLimited
from server.ratelimit import MemoryBuckets, RateLimiter, RedisBuckets, key_id


async def take_all(buckets, name, capacity, per_second, costs):
    return [await buckets.take(name, capacity, per_second, c) for c in costs]


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_bucket_takes_its_capacity_then_says_how_long_to_wait(store, redis_url):
    buckets = MemoryBuckets() if store == "memory" else RedisBuckets(redis_url)
    name = f"test-{store}"
    waits = await take_all(buckets, name, 3, 0.5, [1, 1, 1, 1])  # 3 at once, then 2 s per unit
    assert waits[:3] == [0, 0, 0]
    assert 1.9 < waits[3] <= 2.0  # one unit short at 0.5 per second
    waits = await take_all(buckets, name, 3, 0.5, [0.5])  # a refused take took nothing
    assert waits == [0] or waits[0] <= 1.0


async def test_redis_bucket_refills_on_redis_clock(redis_url):
    buckets = RedisBuckets(redis_url)
    assert await take_all(buckets, "refill", 2, 20.0, [2, 2]) == [0, pytest.approx(0.1, abs=0.02)]
    await asyncio.sleep(0.15)
    assert await take_all(buckets, "refill", 2, 20.0, [2]) == [0]


async def limited(limiter, key, kind, cost) -> RateLimited | None:
    try:
        await limiter.take(key, kind, cost)
    except RateLimited as exc:
        return exc
    return None


async def test_limiter_refuses_with_retry_after_and_keys_are_separate():
    limiter = RateLimiter(rpm=2, tpm=600)
    a, b = key_id("key-a"), key_id("key-b")
    assert a != b and "key-a" not in a
    assert await limited(limiter, a, "requests", 1) is None
    assert await limited(limiter, a, "requests", 1) is None
    refused = await limited(limiter, a, "requests", 1)
    assert refused.status == 429 and refused.type == "RateLimitError"
    assert refused.headers["Retry-After"] == "30"  # 2 per minute: one every 30 s
    assert "--rate-limit-rpm" in refused.message
    assert await limited(limiter, b, "requests", 1) is None  # another key: its own bucket
    assert await limited(limiter, a, "tokens", 500) is None
    short = await limited(limiter, a, "tokens", 200)  # 100 short, 10 per second
    assert int(short.headers["Retry-After"]) == 10
    too_big = await limited(limiter, b, "tokens", 601)  # never fits: no point retrying
    assert too_big is not None and "Retry-After" not in too_big.headers
    assert await limited(RateLimiter(), a, "tokens", 10**9) is None  # no limits set


async def test_replicas_on_one_redis_share_the_bucket(redis_url):
    replica_1 = RateLimiter(rpm=3, store=redis_url)
    replica_2 = RateLimiter(rpm=3, store=redis_url)
    in_process = RateLimiter(rpm=3)
    key = key_id("shared-across-replicas")
    assert await limited(replica_1, key, "requests", 1) is None
    assert await limited(replica_2, key, "requests", 1) is None
    assert await limited(replica_1, key, "requests", 1) is None
    assert await limited(replica_2, key, "requests", 1) is not None  # the other replica's 3 count
    assert await limited(in_process, key, "requests", 1) is None  # memory: per replica


async def test_unreachable_redis_lets_requests_through():
    from prometheus_client import REGISTRY

    before = REGISTRY.get_sample_value("longserve_rate_limit_store_errors_total") or 0
    limiter = RateLimiter(rpm=1, store="redis://127.0.0.1:1/0")  # nothing listens there
    assert await limited(limiter, "k", "requests", 1) is None
    assert await limited(limiter, "k", "requests", 1) is None
    assert REGISTRY.get_sample_value("longserve_rate_limit_store_errors_total") == before + 2


def test_admission_counts_queued_prompt_tokens():
    from server.errors import QueueFull
    from server.limits import Admission

    adm = Admission(max_queued_requests=10, max_queued_tokens=1000)
    adm.max_num_seqs = 1
    big = adm.admit()
    asyncio.run(big.enter_queue([1500], 8192, 16))  # alone in the queue: let in
    second = adm.admit()
    with pytest.raises(QueueFull) as info:
        asyncio.run(second.enter_queue([10], 8192, 16))
    assert "--max-queued-tokens" in info.value.message and info.value.headers["Retry-After"]
    big.started()  # its first output: no longer queued
    asyncio.run(second.enter_queue([600], 8192, 16))
    third = adm.admit()
    with pytest.raises(QueueFull):
        asyncio.run(third.enter_queue([401], 8192, 16))
    third.release()
    asyncio.run(adm.admit().enter_queue([400], 8192, 16))
    assert adm.queued_tokens == 1000
    second.release()
    assert adm.queued_tokens == 400


def test_tokens_charged_are_prompt_plus_what_may_be_generated():
    from server.limits import Admission

    adm = Admission(max_queued_requests=10, limiter=RateLimiter(tpm=10_000),
                    default_max_tokens=2048)
    ticket = adm.admit()
    spent = []

    async def take(key, kind, cost):
        spent.append(cost)
    adm.limiter.take = take
    asyncio.run(ticket.enter_queue([100], 8192, None))  # default cap
    asyncio.run(ticket.enter_queue([8000], 8192, None))  # capped by the room left
    asyncio.run(ticket.enter_queue([100, 200], 8192, 50, choices=2))  # two prompts, n=2
    assert spent == [100 + 2048, 8000 + 192, 300 + 2 * 100]
