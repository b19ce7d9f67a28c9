"""Queue limit (429 + Retry-After) and client disconnects aborting engine work."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import MAX_NUM_SEQS, MAX_QUEUED, metric_value

pytestmark = pytest.mark.engine

LONG = {"messages": [{"role": "user", "content": "Count from one to one thousand."}],
        "max_tokens": 1500, "ignore_eos": True, "temperature": 0}


def metrics_text(server, auth) -> str:
    return httpx.get(server.url + "/metrics", headers=auth).text


def wait_engine_idle(server, auth, timeout: float) -> float:
    """Seconds until vLLM reports no running and no waiting request."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        text = metrics_text(server, auth)
        if (metric_value(text, "vllm:num_requests_running")
                + metric_value(text, "vllm:num_requests_waiting")) == 0:
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"engine still busy after {timeout}s")


def wait_disconnects(server, auth, stream: bool, expected: float, timeout: float = 10) -> float:
    """The disconnect count once it reaches `expected` (it is counted when the route's
    stream closes, which may come a moment after the engine has dropped the request)."""
    deadline = time.monotonic() + timeout
    while (count := disconnects(server, auth, stream)) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return count


def disconnects(server, auth, stream: bool) -> float:
    # vLLM counts no aborted request in its metrics; longserve counts client disconnects
    return metric_value(metrics_text(server, auth), "longserve_client_disconnects_total",
                        stream=str(stream).lower())


async def test_queue_over_limit_gets_429_with_retry_after(server, auth):
    admitted = MAX_NUM_SEQS + MAX_QUEUED
    async with httpx.AsyncClient(base_url=server.url, headers=auth, timeout=120) as http:
        streams = [http.stream("POST", "/v1/chat/completions", json={**LONG, "stream": True})
                   for _ in range(admitted + 3)]
        responses = []
        for cm in streams:  # in order, each one's headers before the next is sent
            responses.append(await cm.__aenter__())
        statuses = [r.status_code for r in responses]
        rejected = [r for r in responses if r.status_code == 429]
        for r in rejected:
            await r.aread()
        bodies = [r.json() for r in rejected]
        running = []  # the admitted requests in the engine's slots are being served
        for r in responses[:MAX_NUM_SEQS]:
            lines = r.aiter_lines()
            running.append(await anext(line async for line in lines if line.startswith("data")))
        for cm in streams:
            await cm.__aexit__(None, None, None)
    assert statuses == [200] * admitted + [429] * 3
    assert all(r.headers["retry-after"] == "1" for r in rejected)
    assert all(b["error"]["type"] == "RateLimitError" and "--max-queued-requests" in
               b["error"]["message"] for b in bodies)
    assert all('"content"' in line or '"role"' in line for line in running)
    wait_engine_idle(server, auth, timeout=30)
    assert httpx.get(server.url + "/ready").status_code == 200  # healthy, and serving:
    after = httpx.post(server.url + "/v1/chat/completions", headers=auth, timeout=60,
                       json={**LONG, "max_tokens": 4})
    assert after.status_code == 200 and after.json()["usage"]["completion_tokens"] == 4


def test_streaming_disconnect_aborts_in_engine(server, auth):
    before = disconnects(server, auth, stream=True)
    with httpx.stream("POST", server.url + "/v1/chat/completions", headers=auth,
                      json={**LONG, "stream": True}, timeout=60) as resp:
        lines = resp.iter_lines()
        assert [next(lines) for _ in range(6)]  # tokens are flowing
    # 1500 tokens would take over a minute; an abort frees the engine in moments
    assert wait_engine_idle(server, auth, timeout=15) < 15
    assert wait_disconnects(server, auth, True, before + 1) == before + 1


def test_non_streaming_disconnect_aborts_in_engine(server, auth):
    before = disconnects(server, auth, stream=False)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", headers=auth, json=LONG, timeout=3)
    assert wait_engine_idle(server, auth, timeout=15) < 15
    assert wait_disconnects(server, auth, False, before + 1) == before + 1
