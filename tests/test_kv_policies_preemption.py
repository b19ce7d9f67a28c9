"""KV policies under memory pressure. Two short requests under `full` arrive first, two long
compressed ones after; as all four generate, the KV memory runs out and vLLM preempts
(frees a request's blocks and recomputes it from its tokens; a compressed request's policy
runs again after the recompute). Everything completes, every block comes back, and the
engine answers as before. (Outputs inside such a batch are not compared with solo runs:
on CPU, vLLM's own outputs drift from the solo run after ~30 tokens in a batch of four,
policies or not.)"""

from __future__ import annotations

import asyncio
import uuid

import httpx

import pytest

from tests.conftest import FLOAT32, longserve_eager, metric_value
from tests.test_kv_policies_http import body, metrics, run, tokens

pytestmark = pytest.mark.engine

# 11 blocks of 128 tokens for this model in float32 (46 KiB of KV per token): the two
# `full` requests alone need 12 by their end, so preemption happens whatever the
# compressed ones do; a compressed request fits only once its policy has run
# (900 + 300 tokens: 10 blocks).
KV_MEMORY = "64MiB"


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    srv = longserve_eager(tmp_path_factory.mktemp("small") / "longserve.log", *FLOAT32,
                          "--kv-cache-memory", KV_MEMORY, "--max-model-len", "1280",
                          "--max-num-seqs", "8").start()
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def prompts(tokenizer):
    from loadtests.tasks import build_sample

    return ([build_sample("niah_single", 300, i, 5, tokenizer) for i in range(2)]
            + [build_sample("niah_single", 900, i, 6, tokenizer) for i in range(2)])


def staggered(server, payloads, gap: float = 0.5) -> list[list[int]]:
    """Sent in order, `gap` seconds apart (vLLM preempts the latest arrival first)."""
    async def go():
        async with httpx.AsyncClient(base_url=server.url, timeout=600) as http:
            tasks = []
            for p in payloads:
                tasks.append(asyncio.create_task(tokens(http, p)))
                await asyncio.sleep(gap)
            return await asyncio.gather(*tasks)
    return asyncio.run(go())


def test_preemption_keeps_full_requests_exact(small_server, prompts):
    long_run = {"max_tokens": 400, "ignore_eos": True}
    compressed_run = {"max_tokens": 300, "ignore_eos": True}
    solo = [run(small_server, {}, body(s, salt=uuid.uuid4().hex, **long_run))[0]
            for s in prompts[:2]]
    before = metric_value(metrics(small_server, {}), "vllm:num_preemptions_total")
    out = staggered(small_server, [
        body(prompts[0], salt=uuid.uuid4().hex, **long_run),
        body(prompts[1], salt=uuid.uuid4().hex, **long_run),
        body(prompts[2], {"name": "snapkv", "budget": 0.3}, salt=uuid.uuid4().hex,
             **compressed_run),
        body(prompts[3], {"name": "h2o", "budget": 0.3}, salt=uuid.uuid4().hex,
             **compressed_run),
    ])
    text = metrics(small_server, {})
    assert metric_value(text, "vllm:num_preemptions_total") > before
    assert [len(o) for o in out] == [400, 400, 300, 300]
    assert metric_value(text, "vllm:kv_cache_usage_perc") == 0
    again = [run(small_server, {}, body(s, salt=uuid.uuid4().hex, **long_run))[0]
             for s in prompts[:2]]
    assert again == solo
