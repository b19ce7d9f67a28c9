"""Admission on a server of its own: per-key rate limits (buckets in a real Redis),
the token-counted queue and the queue deadline, through the official client and raw HTTP.

One engine slot (`--max-num-seqs 1`): a long request holds it and whatever comes next
waits. Each test uses its own API keys, so the buckets of one do not bleed into another.
"""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from server.ratelimit import RateLimiter, key_id
from tests.conftest import longserve_eager, metric_value
from tests.test_limits_http import wait_engine_idle

pytestmark = pytest.mark.engine

KEYS = ["rpm-a", "rpm-b", "tpm-a", "queue-a", "deadline-a"]
RPM, TPM, QUEUED_TOKENS, DEADLINE = 3, 4000, 1000, 4
SHORT = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 1,
         "temperature": 0}
HOLD = {"messages": [{"role": "user", "content": "Count from one to one thousand."}],
        "max_tokens": 1500, "ignore_eos": True, "temperature": 0, "stream": True}


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory, redis_url):
    srv = longserve_eager(
        tmp_path_factory.mktemp("admission") / "longserve.log",
        "--api-key", ",".join(KEYS), "--max-num-seqs", "1", "--kv-cache-memory", "256MiB",
        "--rate-limit-rpm", str(RPM), "--rate-limit-tpm", str(TPM),
        "--rate-limit-store", redis_url,
        "--max-queued-tokens", str(QUEUED_TOKENS), "--queue-timeout", str(DEADLINE),
    ).start()
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


def headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def client(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)


def metrics(server) -> str:
    return httpx.get(server.url + "/metrics", headers=headers(KEYS[0])).text


def prompt_of(tokens: int) -> list[dict]:
    """A user message of about `tokens` tokens of the default model."""
    return [{"role": "user", "content": "Summarize: " + "the cat sat on the mat. " * (tokens // 7)}]


def test_requests_per_minute_per_key(limited_server):
    model = client(limited_server, "rpm-a").models.list().data[0].id  # not rate limited
    for _ in range(RPM):
        client(limited_server, "rpm-a").chat.completions.create(model=model, **SHORT)
    with pytest.raises(openai.RateLimitError) as info:
        client(limited_server, "rpm-a").chat.completions.create(model=model, **SHORT)
    retry_after = int(info.value.response.headers["retry-after"])
    assert 1 <= retry_after <= 60 // RPM
    assert "--rate-limit-rpm" in info.value.body["message"]
    client(limited_server, "rpm-b").chat.completions.create(model=model, **SHORT)  # own bucket
    assert metric_value(metrics(limited_server), "longserve_rate_limited_total",
                        key=key_id("rpm-a"), limit="requests") == 1
    text = metrics(limited_server)
    assert "rpm-a" not in text  # keys appear only as their hash


def test_tokens_per_minute_shared_with_another_replica(limited_server, redis_url):
    """Another replica (the same limiter on the same Redis) spends most of the key's
    tokens; this server then refuses what no longer fits, and anything over the limit."""
    import asyncio

    model = client(limited_server, "tpm-a").models.list().data[0].id
    asyncio.run(RateLimiter(tpm=TPM, store=redis_url).take(key_id("tpm-a"), "tokens", 3800))
    with pytest.raises(openai.RateLimitError) as info:
        client(limited_server, "tpm-a").chat.completions.create(
            model=model, messages=SHORT["messages"], max_tokens=300)
    assert "--rate-limit-tpm" in info.value.body["message"]
    assert int(info.value.response.headers["retry-after"]) >= 2
    resp = httpx.post(limited_server.url + "/v1/chat/completions", headers=headers("rpm-b"),
                      json={**SHORT, "max_tokens": TPM}, timeout=60)
    assert resp.status_code == 429 and "retry-after" not in resp.headers  # never fits
    assert f"more than the {TPM} per minute" in resp.json()["error"]["message"]


def test_queued_prompt_tokens_are_limited(limited_server):
    auth = headers("queue-a")
    url = limited_server.url + "/v1/chat/completions"
    wait_engine_idle(limited_server, auth, timeout=60)
    waiting = {"messages": prompt_of(600), "max_tokens": 4, "stream": True}
    with httpx.Client(headers=auth, timeout=60) as http:
        with http.stream("POST", url, json=HOLD) as holder:  # takes the one slot
            assert holder.status_code == 200
            lines = holder.iter_lines()
            assert [next(lines) for _ in range(4)]  # decoding: its prompt left the queue
            with http.stream("POST", url, json=waiting) as queued:  # ~600 tokens wait
                assert queued.status_code == 200
                deadline = time.monotonic() + DEADLINE
                while metric_value(metrics(limited_server),
                                   "longserve_queued_prompt_tokens") < 500:
                    assert time.monotonic() < deadline, "the waiting prompt was not counted"
                    time.sleep(0.05)
                refused = http.post(url, json={**waiting, "stream": False})
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert "--max-queued-tokens" in refused.json()["error"]["message"]
    wait_engine_idle(limited_server, auth, timeout=60)
    assert metric_value(metrics(limited_server), "longserve_queued_prompt_tokens") == 0


def test_queue_deadline_answers_503_and_aborts(limited_server):
    auth = headers("deadline-a")
    url = limited_server.url + "/v1/chat/completions"
    wait_engine_idle(limited_server, auth, timeout=60)
    before = metric_value(metrics(limited_server), "longserve_queue_timeouts_total")
    with httpx.Client(headers=auth, timeout=60) as http:
        with http.stream("POST", url, json=HOLD) as holder:
            lines = holder.iter_lines()
            assert [next(lines) for _ in range(4)]
            started = time.monotonic()
            late = http.post(url, json=SHORT)
            waited = time.monotonic() - started
            with http.stream("POST", url, json={**SHORT, "stream": True}) as late_stream:
                events = [line for line in late_stream.iter_lines() if line.startswith("data")]
            deadline = time.monotonic() + 10  # the engine reports at its next step
            while (waiting := metric_value(metrics(limited_server),
                                           "vllm:num_requests_waiting")) and \
                    time.monotonic() < deadline:
                time.sleep(0.1)
    assert late.status_code == 503 and late.headers["retry-after"] == "1"
    error = late.json()["error"]
    assert error["type"] == "ServiceUnavailableError" and "--queue-timeout" in error["message"]
    assert DEADLINE <= waited < DEADLINE + 10
    assert late_stream.status_code == 200  # a stream's headers went out at once
    assert events[-1] == "data: [DONE]" and len(events) == 2
    event = json.loads(events[0].removeprefix("data: "))["error"]
    assert event["code"] == 503 and event["type"] == "ServiceUnavailableError"
    assert "--queue-timeout" in event["message"]
    assert waiting == 0  # both were aborted in the engine, not left queued there
    assert metric_value(metrics(limited_server), "longserve_queue_timeouts_total") == before + 2
    wait_engine_idle(limited_server, auth, timeout=60)
