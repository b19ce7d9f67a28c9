"""KV policies on the real engine: blocks really go back to vLLM, and nothing else changes
(prefix-cache hits after compressed requests, aborts, shared prefixes). Requests under
`full` batched with compressed ones: tests/test_kv_policies_batch.py."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
import uuid

import httpx
import pytest

from tests.conftest import engine_core, metric_value

pytestmark = pytest.mark.engine

BLOCK = 128  # vLLM's CPU default block size
# A sampled request's length: a ~1.6k-token prompt plus this stays inside the model's 8k
# window; the request is aborted as soon as it has been sampled.
LONG_RUN = {"max_tokens": 6000, "ignore_eos": True}


@pytest.fixture(scope="module")
def needle_prompts(tokenizer):
    from loadtests.tasks import build_sample

    return [build_sample("niah_single", 1600, i, 11, tokenizer) for i in range(8)]


def metrics(server, auth) -> str:
    return httpx.get(server.url + "/metrics", headers=auth).text


def compactions(server, auth, policy: str) -> float:
    return policy_counters(server, auth, policy)["compactions"]


def running_requests(server, auth) -> float:
    return metric_value(metrics(server, auth), "vllm:num_requests_running")


def kv_usage(server, auth) -> float:
    return metric_value(metrics(server, auth), "vllm:kv_cache_usage_perc")


def body(sample, policy=None, max_tokens=24, salt=None, **extra) -> dict:
    out = {"messages": sample.messages, "max_tokens": max_tokens, "temperature": 0,
           "return_token_ids": True, **extra}
    if policy:
        out["kv_policy"] = policy
    if salt:  # a fresh salt: no prefix-cache hit, the run is cold
        out["cache_salt"] = salt
    return out


async def tokens(http: httpx.AsyncClient, payload: dict) -> list[int]:
    resp = await http.post("/v1/chat/completions", json=payload)
    assert resp.status_code == 200, resp.text
    return resp.json()["choices"][0]["token_ids"]


def run(server, auth, *payloads) -> list[list[int]]:
    """The payloads sent at once (one batch in the engine); their output token ids."""
    async def go():
        async with httpx.AsyncClient(base_url=server.url, headers=auth, timeout=300) as http:
            return await asyncio.gather(*(tokens(http, p) for p in payloads))
    return asyncio.run(go())


@contextlib.contextmanager
def engine_frozen(server):
    """The server's engine core stopped (SIGSTOP) for the block, continued after: no step
    runs, so every request in flight keeps its blocks and the API server catches up with
    the steps already made (its metrics then describe the engine's last step)."""
    import signal

    core = engine_core(server)
    core.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        core.send_signal(signal.SIGCONT)


def settled_metrics(scraper: httpx.Client, quiet: float = 0.5, timeout: float = 60) -> str:
    """`/metrics` once vLLM's generation counter has stayed put across two scrapes `quiet`
    seconds apart (the engine is frozen: the API server has taken in its last step)."""
    text = scraper.get("/metrics").text
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(quiet)
        again = scraper.get("/metrics").text
        if (metric_value(again, "vllm:generation_tokens_total")
                == metric_value(text, "vllm:generation_tokens_total")):
            return again
        text = again
    raise AssertionError(f"vLLM's generation counter still moving {timeout}s after the "
                         "engine core was stopped")


def sample_while_streaming(server, auth, payload: dict, probe=None, want: int = 3,
                           spacing: int = 8, attempts: int = 2) -> list:
    """`(tokens generated, probe(metrics_text))` while the request decodes, as the engine
    saw it; `probe` is vLLM's KV usage by default. `want` times, the client reads `spacing`
    more chunks of the stream, then the engine core is frozen (`engine_frozen`) and
    `/metrics` read once it has settled: the request is mid-decode and holds its blocks,
    and the counter and the gauges come from the same engine step, however far the client
    or the API server had fallen behind the engine. (Scrapes taken while the engine ran
    failed on CI, again and again, where the client read the stream or the API server
    forwarded it far behind the engine: a request finished, or no scrape fell inside it.)
    Then the client closes the stream (vLLM aborts the request) and the engine is waited
    back to idle. A sample counts when the counter shows the request past its 4th token
    (prefill done, the policy applied) and short of its last; a request that finished
    before it was sampled `want` times is sent again with a fresh `cache_salt` (`attempts`
    in all). `payload` must run to `max_tokens` (ignore_eos; `LONG_RUN`) on an otherwise
    idle engine; the caller judges each sample at its own token count (`blocks_of`,
    `full_cache_blocks`)."""
    from tests.test_limits_http import wait_engine_idle

    assert payload.get("ignore_eos"), "the window is counted in generated tokens"
    probe = probe or (lambda text: metric_value(text, "vllm:kv_cache_usage_perc"))
    generated = lambda text: metric_value(text, "vllm:generation_tokens_total")  # noqa: E731
    tried = []
    with httpx.Client(base_url=server.url, headers=auth, timeout=120) as scraper:
        for attempt in range(attempts):
            if attempt and "cache_salt" in payload:
                payload = {**payload, "cache_salt": uuid.uuid4().hex}
            base = generated(scraper.get("/metrics").text)
            window = (base + 4, base + payload["max_tokens"])
            samples, seen, chunks = [], [], 0
            with scraper.stream("POST", "/v1/chat/completions",
                                json={**payload, "stream": True}, timeout=300) as resp:
                assert resp.status_code == 200, resp.read()
                lines = (line for line in resp.iter_lines() if line.startswith("data: "))
                while len(samples) < want:
                    read = sum(1 for _ in zip(range(spacing), lines))
                    chunks += read
                    if read < spacing:
                        break  # the stream ended
                    with engine_frozen(server):
                        text = settled_metrics(scraper)
                    count = generated(text)
                    seen.append((chunks, count - base))
                    if not window[0] <= count < window[1]:
                        break  # the request finished before the engine was frozen
                    samples.append((count - base, probe(text)))
            wait_engine_idle(server, auth, timeout=120)
            if len(samples) >= want:
                return samples
            tried.append(f"(chunks read, tokens generated) when frozen: {seen}; "
                         f"{chunks} chunks read")
    raise AssertionError(f"no {want} samples while the request decoded, in {attempts} "
                         f"requests: {' | '.join(tried)}")


def total_blocks(server, auth) -> int:
    """Blocks in vLLM's KV cache, as its usage gauge counts them (the null block aside)."""
    text = metrics(server, auth)
    return int(re.search(r'vllm:cache_config_info\{[^}]*num_gpu_blocks="(\d+)"', text)[1]) - 1


def blocks_of(server, auth, usage: float) -> int:
    return round(usage * total_blocks(server, auth))


def full_cache_blocks(prompt_tokens: int, generated: float) -> int:
    """Blocks a request holds under the full cache once it has generated `generated`."""
    return -(-(prompt_tokens + int(generated)) // BLOCK)


def blocks_while_streaming(server, auth, payload: dict, prompt_tokens: int) -> list:
    """`(blocks held, blocks the full cache holds at the same token count)` per sample."""
    return [(blocks_of(server, auth, usage), full_cache_blocks(prompt_tokens, count))
            for count, usage in sample_while_streaming(server, auth, payload)]


@pytest.mark.parametrize("policy", [{"name": "snapkv", "budget": 0.3}, {"name": "kivi4"}],
                         ids=["snapkv", "kivi4"])
def test_compressed_request_gives_blocks_back(server, auth, needle_prompts, policy):
    from tests.test_limits_http import wait_engine_idle

    full, compressed = needle_prompts[0], needle_prompts[1]
    name = policy["name"]
    salt = uuid.uuid4().hex
    wait_engine_idle(server, auth, timeout=120)  # usage then counts these requests only
    # one compaction on its own: what it gives back. (The gauges add up every compaction
    # so far, re-compactions of long decodes included, which give back a smaller share.)
    before = policy_counters(server, auth, name)
    run(server, auth, body(compressed, policy, salt=salt))  # 24 tokens: prefill's only
    once = {k: v - before[k] for k, v in policy_counters(server, auth, name).items()}
    assert once["compactions"] == 1, once
    assert 1 - once["blocks_freed"] / once["blocks_before"] < 0.45, once
    if name == "snapkv":  # evicts: fewer entries
        assert once["tokens_kept"] / once["tokens_before"] < 0.45, once
    else:  # quantizes: every entry kept, in a third of the blocks
        assert once["tokens_kept"] == once["tokens_before"], once
    text = metrics(server, auth)  # the gauges: the same ratios over every compaction
    totals = policy_counters(server, auth, name, text)
    assert metric_value(text, "longserve_kv_memory_ratio", policy=name) == pytest.approx(
        1 - totals["blocks_freed"] / totals["blocks_before"])
    assert metric_value(text, "longserve_kv_compression_ratio", policy=name) == pytest.approx(
        totals["tokens_kept"] / totals["tokens_before"])

    # the measurement itself: under the full cache the gauge shows the request's blocks
    freed_before = metric_value(metrics(server, auth), "longserve_kv_blocks_freed_total",
                                policy=name)
    for held, expected in blocks_while_streaming(
            server, auth, body(full, salt=uuid.uuid4().hex, **LONG_RUN), full.prompt_tokens):
        assert expected <= held <= expected + 1, (held, expected)
    # the same prompt again (a prefix-cache hit unless evicted since): compacted as cold
    for held, expected in blocks_while_streaming(server, auth, body(
            compressed, policy, salt=salt, **LONG_RUN), compressed.prompt_tokens):
        assert 0 < held < 0.5 * expected, (held, expected)
    freed = metric_value(metrics(server, auth), "longserve_kv_blocks_freed_total",
                         policy=name) - freed_before
    prompt_blocks = -(-compressed.prompt_tokens // BLOCK)
    assert freed >= prompt_blocks // 2, (freed, prompt_blocks)


def policy_counters(server, auth, policy: str, text: str | None = None) -> dict[str, float]:
    """The policy's `longserve_kv_*_total` counters (server/metrics.py KVPolicyCollector)."""
    from server.metrics import KVPolicyCollector

    text = text or metrics(server, auth)
    return {field: metric_value(text, f"longserve_kv_{field}_total", policy=policy)
            for field in KVPolicyCollector.COUNTERS}


def test_quantized_kv_answers_as_the_full_cache(server, auth, needle_prompts):
    """8-bit KIVI gives the full cache's greedy tokens; 4-bit, and 4-bit keys with 3-bit
    values, still find the needle and give back the blocks their formats count. Only
    whole blocks older than the newest 128 entries (KIVI's residual window) are packed."""
    from cache_policies.registry import policy_class

    sample = needle_prompts[5]
    [full] = run(server, auth, body(sample, salt=uuid.uuid4().hex))
    [kivi8] = run(server, auth, body(sample, {"name": "kivi8"}, salt=uuid.uuid4().hex))
    assert kivi8 == full
    block = BLOCK * 2 * 64 * 4  # bytes per KV head of one float32 block (conftest)
    for name in ("kivi4", "kivi4v3"):
        before = policy_counters(server, auth, name)
        resp = httpx.post(server.url + "/v1/chat/completions", headers=auth, timeout=120,
                          json=body(sample, {"name": name}, salt=uuid.uuid4().hex))
        assert resp.json()["longserve"]["kv_policy"]["name"] == name
        assert sample.answers[0] in resp.json()["choices"][0]["message"]["content"], name
        after = policy_counters(server, auth, name)
        prompt = resp.json()["usage"]["prompt_tokens"]  # with the chat template
        assert prompt % BLOCK, "the residual window must differ from the partial block"
        groups = (prompt - 128) // BLOCK  # the blocks before the residual window
        assert after["tokens_before"] - before["tokens_before"] == groups * BLOCK, name
        freed = after["blocks_freed"] - before["blocks_freed"]
        need = policy_class(name).format(64, BLOCK).blocks_for(groups, block)
        assert freed == groups - need > 0, (name, freed, groups, need)


def test_chunkkv_kivi8_packs_only_its_survivors(server, auth, needle_prompts):
    """`chunkkv_kivi8` at 0.4: of the blocks before the residual window it packs, at 8 bits,
    as many groups as the budget leaves after the entries that stay in full precision
    (chosen as `chunkkv` chooses), gives the rest back, and finds the needle."""
    from cache_policies.registry import policy_class

    sample = needle_prompts[5]
    before = policy_counters(server, auth, "chunkkv_kivi8")
    resp = httpx.post(server.url + "/v1/chat/completions", headers=auth, timeout=120,
                      json=body(sample, {"name": "chunkkv_kivi8", "budget": 0.4},
                                salt=uuid.uuid4().hex))
    assert resp.status_code == 200, resp.text
    assert sample.answers[0] in resp.json()["choices"][0]["message"]["content"]
    after = policy_counters(server, auth, "chunkkv_kivi8")
    prompt = resp.json()["usage"]["prompt_tokens"]  # with the chat template
    groups = (prompt - 128) // BLOCK
    exact = prompt - groups * BLOCK  # the residual window and the partial block
    keep = round((math.ceil(0.4 * prompt) - exact) / BLOCK)
    assert 0 < keep < groups
    block = BLOCK * 2 * 64 * 4  # bytes per KV head of one float32 block (conftest)
    assert after["tokens_before"] - before["tokens_before"] == groups * BLOCK
    assert after["tokens_kept"] - before["tokens_kept"] == keep * BLOCK
    need = policy_class("chunkkv_kivi8").format(64, BLOCK).blocks_for(keep, block)
    assert after["blocks_freed"] - before["blocks_freed"] == groups - need


def test_cskv_packs_features_and_answers_as_the_full_cache(server, auth, needle_prompts):
    """The session server serves full-rank CSKV bases (conftest): `cskv8` stores each
    entry as 8-bit features of its un-rotated key and its value, in about half the blocks,
    and finds the needle as the full cache does; `cskv4` in about a quarter."""
    from cache_policies.compress.kivi import PackedFormat

    info = httpx.get(server.url + "/info", headers=auth).json()["cskv"]
    assert (info["key_rank"], info["value_rank"], info["head_dim"]) == (64, 64, 64)
    sample = needle_prompts[5]
    full = httpx.post(server.url + "/v1/chat/completions", headers=auth, timeout=120,
                      json=body(sample, salt=uuid.uuid4().hex)).json()["choices"][0]["message"]
    assert sample.answers[0] in full["content"]
    groups = sample.prompt_tokens // BLOCK - 1  # the full blocks before the one being written
    block = BLOCK * 2 * 64 * 4  # bytes per KV head of one float32 block (conftest)
    for name, bits in (("cskv8", 8), ("cskv4", 4)):
        before = metric_value(metrics(server, auth), "longserve_kv_blocks_freed_total", policy=name)
        resp = httpx.post(server.url + "/v1/chat/completions", headers=auth, timeout=120,
                          json=body(sample, {"name": name}, salt=uuid.uuid4().hex))
        assert resp.status_code == 200, resp.text
        assert sample.answers[0] in resp.json()["choices"][0]["message"]["content"], name
        freed = metric_value(metrics(server, auth), "longserve_kv_blocks_freed_total",
                             policy=name) - before
        need = PackedFormat(bits, 64, BLOCK, 64).blocks_for(groups, block)
        assert freed >= groups - need > 0, (name, freed, groups, need)


def test_cskv_stream_after_a_shared_prefix(server, auth, needle_prompts):
    """A CSKV request whose document another running request holds leaves the document
    shared and packs only what follows it (the stream's positions start after the pinned
    prefix), generating past several packings and still answering."""
    salt = uuid.uuid4().hex
    doc = needle_prompts[2]
    other = copy_with_question(doc, "What is the special magic number? Answer twice.")

    with prefix_held(server, auth, doc, salt):
        before = compactions(server, auth, "cskv4")
        resp = httpx.post(server.url + "/v1/chat/completions", headers=auth, timeout=300,
                          json=body(other, {"name": "cskv4"}, max_tokens=700, ignore_eos=True,
                                    salt=salt))
        # generated blocks, packed two at a time
        assert compactions(server, auth, "cskv4") - before >= 2
    assert resp.status_code == 200, resp.text
    assert doc.answers[0] in resp.json()["choices"][0]["message"]["content"]


def test_budget_one_is_token_identical_to_full(server, auth, needle_prompts):
    sample = needle_prompts[2]
    [full] = run(server, auth, body(sample, salt=uuid.uuid4().hex))
    [same] = run(server, auth, body(sample, {"name": "snapkv", "budget": 1.0},
                                    salt=uuid.uuid4().hex))
    assert same == full


@pytest.mark.parametrize("policy", [{"name": "snapkv", "budget": 0.25}, {"name": "kivi4"},
                                    {"name": "cskv4"}, {"name": "shadow4", "budget": 0.25}],
                         ids=["snapkv", "kivi4", "cskv4", "shadow4"])
def test_prefix_cache_hit_after_compressed_request_is_exact(server, auth, needle_prompts,
                                                             policy):
    sample = needle_prompts[7]
    # Reference: the same prompt, with its prefix cached by a request under `full`.
    cold_salt, salt = uuid.uuid4().hex, uuid.uuid4().hex
    [cold] = run(server, auth, body(sample, salt=cold_salt))
    [warm_reference] = run(server, auth, body(sample, salt=cold_salt))
    run(server, auth, body(sample, policy, salt=salt))
    hits_before = metric_value(metrics(server, auth), "vllm:prefix_cache_hits_total")
    [after_compressed] = run(server, auth, body(sample, salt=salt))
    hits = metric_value(metrics(server, auth), "vllm:prefix_cache_hits_total") - hits_before
    assert hits >= (sample.prompt_tokens // BLOCK - 1) * BLOCK  # it did read the cache
    assert after_compressed == warm_reference == cold


def test_abort_of_compressed_request_frees_everything(server, auth, needle_prompts):
    """Closing the stream mid-decode aborts the request: every block goes back. (The
    helper closes the stream once the frozen engine has shown the request decoding and
    holding blocks, then waits for the engine to be idle.)"""
    from tests.test_limits_http import disconnects, wait_disconnects

    before = disconnects(server, auth, stream=True)
    [(generated, usage)] = sample_while_streaming(server, auth, body(
        needle_prompts[0], {"name": "h2o", "budget": 0.3}, salt=uuid.uuid4().hex,
        **LONG_RUN), want=1)
    assert usage > 0 and generated < LONG_RUN["max_tokens"], (generated, usage)
    assert wait_disconnects(server, auth, stream=True, expected=before + 1) > before
    for _ in range(100):
        if kv_usage(server, auth) == 0:
            break
        time.sleep(0.1)
    assert kv_usage(server, auth) == 0
    assert httpx.get(server.url + "/ready").status_code == 200


def test_long_generation_runs_the_policy_again(server, auth, needle_prompts):
    before = compactions(server, auth, "streaming")
    [out] = run(server, auth, body(needle_prompts[1], {"name": "streaming", "budget": 512},
                                   max_tokens=320, ignore_eos=True, salt=uuid.uuid4().hex))
    assert len(out) == 320
    # once at the end of prefill, once more when the live KV grew 256 past the budget
    assert compactions(server, auth, "streaming") - before == 2


def test_blocks_that_held_packed_kv_serve_the_next_request_cleanly(server, auth,
                                                                   needle_prompts):
    """A packed request's blocks hold quantized bytes, some of which read as NaN in the
    cache dtype; the next owner of such a block must not see them (the kernel weighs a
    partial block's unused slots by zero, and 0 * NaN is NaN). vLLM hands the freed blocks
    out again first, so a two-block request right after gets one as its partial block
    (4 entries at prefill: nearly the whole block is unused slots)."""
    short = {"messages": [{"role": "user", "content": "Which word comes most often? "
                           + "alpha beta gamma delta alpha " * 19}],  # 132 tokens
             "max_tokens": 16, "temperature": 0, "return_token_ids": True}
    [reference] = run(server, auth, {**short, "cache_salt": uuid.uuid4().hex})
    for name in ("kivi4", "kivi2"):
        run(server, auth, body(needle_prompts[3], {"name": name}, salt=uuid.uuid4().hex))
        assert run(server, auth, {**short, "cache_salt": uuid.uuid4().hex}) == [reference], name


@pytest.mark.parametrize("name", ["quest", "actqkv", "shadow4"])
def test_retrieval_attends_to_a_share_of_blocks_and_keeps_everything(server, auth,
                                                                     needle_prompts, name):
    """Decode steps attend to at most the budget's share of pages per KV head (the
    workers count them), and every block between the sink and the recent window leaves
    the engine for the offload tier (host memory by default). Quest and Shadow4 still
    find this sample's needle; ActQKV is not held to it: as implemented it keeps 13-16% of the
    full-cache score (BENCHMARKS.md, issue 5, section 2) and misses this needle in
    float32 (found 2 of the 8 samples here)."""
    sample = needle_prompts[1]

    def counts():
        text = metrics(server, auth)
        return [metric_value(text, f"longserve_kv_{f}_total", policy=name)
                for f in ("retrieval_pages_attended", "retrieval_pages_candidates",
                          "blocks_freed")]

    before = counts()
    resp = httpx.post(server.url + "/v1/chat/completions", headers=auth, timeout=120,
                      json=body(sample, {"name": name, "budget": 0.25}, salt=uuid.uuid4().hex))
    assert resp.status_code == 200, resp.text
    answer = resp.json()["choices"][0]["message"]["content"]
    assert answer and (name == "actqkv" or sample.answers[0] in answer), answer
    deadline = time.monotonic() + 20  # the workers write their counts once a second
    while (after := counts())[1] == before[1] and time.monotonic() < deadline:
        time.sleep(0.2)
    attended, candidates, freed = (a - b for a, b in zip(after, before))
    blocks = -(-sample.prompt_tokens // BLOCK)
    assert candidates >= blocks * 3 * 30  # every layer's 3 KV heads, at least one step
    assert 0 < attended <= 0.25 * candidates, (attended, candidates)  # whole pages, rounded down
    assert freed >= blocks - 3  # all but the sink, the recent and the newest block


def test_long_generation_packs_new_blocks(server, auth, needle_prompts):
    """KIVI packs each block once the block being written is past it: a 1.6k prompt
    generating 400 tokens fills three more blocks, which join the stream in at least one
    more packing (one whose blocks would need a fresh packed block of their own waits)."""
    def counts():
        text = metrics(server, auth)
        return [metric_value(text, f"longserve_kv_{f}_total", policy="kivi4")
                for f in ("compactions", "tokens_kept")]

    before = counts()
    [out] = run(server, auth, body(needle_prompts[4], {"name": "kivi4"}, max_tokens=400,
                                   ignore_eos=True, salt=uuid.uuid4().hex))
    compactions, kept = (a - b for a, b in zip(counts(), before))
    assert len(out) == 400
    assert compactions >= 2
    # every entry is kept, whole blocks at a time, and more than the prompt's blocks
    assert kept % BLOCK == 0 and kept > (needle_prompts[4].prompt_tokens // BLOCK) * BLOCK


def test_prefix_held_by_another_request_stays_shared(server, auth, needle_prompts):
    """Many questions over one document: while a running request holds the document's
    blocks, a compressed request that hit them in the prefix cache leaves them shared
    (a private compressed copy would cost more memory); alone, it compacts as usual."""
    salt = uuid.uuid4().hex
    doc = needle_prompts[2]
    other = copy_with_question(doc, "What is the special magic number? Answer twice.")

    with prefix_held(server, auth, doc, salt):
        before = compactions(server, auth, "tova")
        [shared] = run(server, auth, body(other, {"name": "tova", "budget": 0.3}, salt=salt))
        assert running_requests(server, auth) >= 1, "the holder ended: nothing held the prefix"
        assert compactions(server, auth, "tova") == before
    [alone] = run(server, auth, body(other, {"name": "tova", "budget": 0.3}, salt=salt))
    assert compactions(server, auth, "tova") == before + 1
    assert shared and alone


@contextlib.contextmanager
def prefix_held(server, auth, sample, salt: str):
    """Inside: a running request holds `sample`'s prompt blocks (in the prefix cache
    under `salt`, and in use); on leaving it is aborted and the engine waited back to
    idle. It asks for `LONG_RUN` tokens, so that a stalled host cannot see it finish
    inside (CI once did, at 200)."""
    from tests.test_limits_http import wait_engine_idle

    holder = body(sample, salt=salt, stream=True, **LONG_RUN)
    with httpx.stream("POST", server.url + "/v1/chat/completions", headers=auth,
                      json=holder, timeout=300) as resp:
        lines = resp.iter_lines()
        next(lines), next(lines)  # its prompt is in the cache and held
        yield
    wait_engine_idle(server, auth, timeout=120)


def copy_with_question(sample, question: str):
    import dataclasses

    messages = [dict(m) for m in sample.messages]
    user = next(m for m in messages if m["role"] == "user")
    user["content"] += "\n" + question
    return dataclasses.replace(sample, messages=messages)
