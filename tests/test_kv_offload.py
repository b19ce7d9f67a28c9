"""The offload tier of retrieval policies, against a real Redis server started here
(Debian's `redis-server`) and the embedded host store: blocks come back byte-identical,
a retrieval request's memory leaves the engine and its tier entries go when it ends."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from cache_policies.offload import HostStore, RedisStore
from tests.conftest import FLOAT32, last_core, longserve_eager, metric_value
from tests.test_kv_policies_http import (
    LONG_RUN,
    blocks_of,
    body,
    full_cache_blocks,
    run,
    sample_while_streaming,
)
from tests.test_limits_http import wait_engine_idle

BLOCK = 128


@pytest.mark.parametrize("tier", ["host", "redis"])
def test_blocks_come_back_byte_identical(tier, redis_url):
    store = HostStore() if tier == "host" else RedisStore(redis_url)
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(5, 3, 128, 128, generator=g).to(torch.bfloat16)
    bits = raw.view(torch.int16)
    bits[0, 0, 0, :4] = torch.tensor([0x7FC0, 0x7F80, -0x80, 0x0001], dtype=torch.int16)
    store.put("req-a", "layers.3.attn", 7, raw)  # logical blocks 7..11
    store.put("req-b", "layers.3.attn", 7, raw.flip(0))
    got = store.get("req-a", "layers.3.attn", [9, 7, 11])
    assert torch.equal(got.view(torch.int16), raw[[2, 0, 4]].view(torch.int16))
    assert len(store) == 10
    store.drop("req-a")
    assert len(store) == 5
    with pytest.raises(KeyError):
        store.get("req-a", "layers.3.attn", [7])
    store.drop("req-b")
    assert len(store) == 0


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory, redis_url):
    srv = longserve_eager(tmp_path_factory.mktemp("offload") / "longserve.log",
                          *FLOAT32, "--kv-offload", redis_url, "--kv-cache-memory", "512MiB",
                          env=last_core()).start()
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


@pytest.mark.engine
def test_retrieval_offloads_to_redis_and_answers_as_with_the_host_tier(
        server, auth, redis_server, redis_url, tokenizer):
    """The same quest request on the shared server (host tier) and on one whose tier is
    Redis: identical tokens (the blocks come back byte-identical), the engine holds a few
    blocks while Redis holds the rest, and Redis is empty once the request is done."""
    import redis

    from loadtests.tasks import build_sample

    sample = build_sample("niah_single", 1600, 3, 17, tokenizer)
    policy = {"name": "quest", "budget": 0.25}
    wait_engine_idle(server, auth, timeout=120)  # alone in its batch, as on the Redis server
    with ThreadPoolExecutor(2) as pool:  # the two servers' engines run on different cores
        host = pool.submit(run, server, auth, body(sample, policy, salt=uuid.uuid4().hex))
        [on_redis] = run(redis_server, {}, body(sample, policy, salt=uuid.uuid4().hex))
        [on_host] = host.result()
    assert on_redis == on_host

    client = redis.Redis.from_url(redis_url)
    for name in ("full", "quest"):
        payload = body(sample, policy if name == "quest" else None, salt=uuid.uuid4().hex,
                       **LONG_RUN)  # aborted once sampled
        samples = sample_while_streaming(  # (KV usage, keys in Redis) while decoding
            redis_server, {}, payload,
            lambda text: (metric_value(text, "vllm:kv_cache_usage_perc"), client.dbsize()))
        for count, (usage, keys) in samples:
            held = blocks_of(redis_server, {}, usage)
            full_blocks = full_cache_blocks(sample.prompt_tokens, count)
            if name == "full":
                assert keys == 0 and full_blocks <= held <= full_blocks + 1, (keys, held)
            else:  # 30 layers x the blocks between the sink block and the recent window
                assert keys >= 30 * (sample.prompt_tokens // BLOCK - 3), keys
                assert held <= 0.3 * full_blocks, (held, full_blocks)
    deadline = time.monotonic() + 10
    while client.dbsize() and time.monotonic() < deadline:  # dropped at the next step
        run(redis_server, {}, {"messages": [{"role": "user", "content": "hi"}],
                               "max_tokens": 2})
    assert client.dbsize() == 0
    text = httpx.get(redis_server.url + "/metrics").text
    assert metric_value(text, "longserve_kv_blocks_freed_total", policy="quest") > 0


@pytest.mark.engine
def test_cskv_on_a_server_without_bases_is_a_client_error(redis_server):
    resp = httpx.post(redis_server.url + "/v1/chat/completions", timeout=30, json={
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
        "kv_policy": {"name": "cskv8"}})
    assert resp.status_code == 400, resp.text
    assert "--cskv" in resp.json()["error"]["message"]
