"""Sparse prefill attention on the real engine, chosen per request: at density 1.0 it is
dense attention (same tokens), at the default settings it still finds a needle at 7k
tokens while computing a fraction of the pairs, across chunked prefill, prefix-cache hits
and batches that mix it with dense requests."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from tests.conftest import metric_value
from tests.test_kv_policies_http import metrics, run

pytestmark = pytest.mark.engine


def needle(tokenizer, length: int, seed: int):
    from loadtests.tasks import build_sample

    return build_sample("niah_single", length, seed, 23, tokenizer)


def body(sample, attention=None, salt=None, max_tokens=24) -> dict:
    out = {"messages": sample.messages, "max_tokens": max_tokens, "temperature": 0,
           "return_token_ids": True, "cache_salt": salt or uuid.uuid4().hex}
    if attention is not None:
        out["attention"] = attention
    return out


def sparse_counts(server, auth, method="vertical_slash") -> dict[str, float]:
    text = metrics(server, auth)
    return {f: metric_value(text, f"longserve_sparse_{f}_total", method=method)
            for f in ("chunks", "tokens", "pairs_attended", "pairs_causal")}


def counted_since(server, auth, before: dict, method="vertical_slash") -> dict[str, float]:
    """The counts since `before` (the workers write them at the end of every step that
    changed them, before the step's output leaves the worker)."""
    now = sparse_counts(server, auth, method)
    return {k: now[k] - before[k] for k in now}


def test_density_one_gives_the_dense_tokens(server, auth, tokenizer):
    """3000 tokens: two prefill chunks (vLLM's CPU default is 2048 per step), the second
    reading the first through the paged cache; every pair computed, through the sparse
    path (counted), and the greedy tokens are dense attention's."""
    sample = needle(tokenizer, 3000, 0)
    [dense] = run(server, auth, body(sample))
    before = sparse_counts(server, auth)
    resp = httpx.post(server.url + "/v1/chat/completions", headers=auth, timeout=300,
                      json=body(sample, {"name": "sparse", "density": 1.0, "min_len": 1024}))
    sparse = resp.json()["choices"][0]["token_ids"]
    counted = counted_since(server, auth, before)
    assert counted["chunks"] == 2 * 30  # both chunks, every layer
    assert counted["tokens"] == 30 * resp.json()["usage"]["prompt_tokens"]
    assert counted["pairs_attended"] == counted["pairs_causal"] > 0
    assert sparse == dense

    # at density 0.1 with the first 15 of 30 layers dense: those layers count every pair
    before = sparse_counts(server, auth)
    run(server, auth, body(sample, {"name": "sparse", "density": 0.1, "min_len": 1024,
                                    "dense_layers": 15}))
    counted = counted_since(server, auth, before)
    assert counted["chunks"] == 2 * 30
    assert 0.5 * counted["pairs_causal"] < counted["pairs_attended"] < counted["pairs_causal"]


def test_default_sparse_finds_the_needle_at_7k(server, auth, tokenizer):
    for seed in (1, 2):
        sample = needle(tokenizer, 7000, seed)
        before = sparse_counts(server, auth)
        resp = httpx.post(server.url + "/v1/chat/completions", headers=auth, timeout=300,
                          json=body(sample, "sparse", max_tokens=40))
        assert resp.status_code == 200, resp.text
        assert sample.answers[0] in resp.json()["choices"][0]["message"]["content"]
        applied = resp.json()["longserve"]["attention"]
        assert applied["name"] == "sparse" and applied["method"] == "vertical_slash"
        counted = counted_since(server, auth, before)
        assert counted["pairs_attended"] < 0.5 * counted["pairs_causal"]


def test_sparse_chunk_after_a_prefix_cache_hit(server, auth, tokenizer):
    """The prompt's blocks cached by a dense request: the sparse request prefills only its
    tail, which reads the cached prefix, and answers as dense attention does."""
    sample = needle(tokenizer, 3000, 3)
    salt = uuid.uuid4().hex
    [dense] = run(server, auth, body(sample, salt=salt))
    hits = metric_value(metrics(server, auth), "vllm:prefix_cache_hits_total")
    before = sparse_counts(server, auth)
    [sparse] = run(server, auth, body(sample, {"name": "sparse", "density": 1.0,
                                               "min_len": 1024}, salt=salt))
    assert metric_value(metrics(server, auth), "vllm:prefix_cache_hits_total") - hits >= 2048
    counted = counted_since(server, auth, before)
    assert 0 < counted["tokens"] < 30 * 128  # only the uncached tail ran
    assert sparse == dense


def test_mixed_batch_of_sparse_and_dense(server, auth, tokenizer):
    samples = [needle(tokenizer, 4000, seed) for seed in (5, 6)]
    short = {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8}

    async def go():
        async with httpx.AsyncClient(base_url=server.url, headers=auth, timeout=300) as http:
            return await asyncio.gather(
                http.post("/v1/chat/completions", json=body(samples[0], "sparse", max_tokens=40)),
                http.post("/v1/chat/completions", json=body(samples[1], max_tokens=40)),
                http.post("/v1/chat/completions", json=short))
    sparse, dense, chat = asyncio.run(go())
    assert [r.status_code for r in (sparse, dense, chat)] == [200, 200, 200]
    assert sparse.json()["longserve"]["attention"]["name"] == "sparse"
    assert dense.json()["longserve"]["attention"] == {"name": "dense"}
    for resp, sample in ((sparse, samples[0]), (dense, samples[1])):
        assert sample.answers[0] in resp.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("attention,message", [
    ({"name": "sparse", "method": "hash"}, "unknown sparse method 'hash'"),
    ({"name": "sparse", "density": 1.5}, "density must be in (0, 1]"),
    ({"name": "sparse", "mass": -0.1}, "mass must be in [0, 1]"),
    ({"name": "sparse", "block": 64}, "block is the KV cache's block size"),
    ({"name": "sparse", "columns": 64}, "columns"),
    ({"name": "dense", "density": 0.5}, "dense attention takes no parameters"),
    ("flash", "'dense' or 'sparse'"),
])
def test_bad_attention_is_a_400(server, auth, attention, message):
    resp = httpx.post(server.url + "/v1/chat/completions", headers=auth, timeout=60, json={
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
        "attention": attention})
    assert resp.status_code == 400, resp.text
    assert message in resp.json()["error"]["message"]
