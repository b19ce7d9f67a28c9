"""The load generator's clock, checked against a fake streaming server that aims at TTFT
300 ms, then one token every 50 ms, and records when it really sent each token: on a busy
host its sleeps overrun, so the load generator is judged against what the server did."""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from loadtests.load import LoadRequest, arrival_gaps, run_load, server_view
from loadtests.servers import free_port

TTFT, ITL, TOKENS = 0.30, 0.05, 12
SENT: list[dict] = []  # per streamed request: arrival and the time each token left


async def chat(request):
    arrived = time.perf_counter()
    body = await request.json()
    if body["messages"][0]["content"] == "overload":
        return JSONResponse({"error": {"message": "busy", "type": "RateLimitError",
                                       "param": None, "code": 429}}, status_code=429)

    sent = {"arrived": arrived, "tokens": []}
    SENT.append(sent)

    async def events():
        await asyncio.sleep(TTFT)
        yield 'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
        for i in range(TOKENS):
            if i:
                await asyncio.sleep(ITL)
            sent["tokens"].append(time.perf_counter())
            delta = {"choices": [{"index": 0, "delta": {"content": f"t{i}"}}]}
            yield "data: " + json.dumps(delta) + "\n\n"
        yield 'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":%d}}\n\n' % TOKENS
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture(scope="module")
def fake_server():
    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def requests(n, content="hello"):
    return [LoadRequest([{"role": "user", "content": content}], 5, TOKENS) for _ in range(n)]


def test_ttft_tpot_itl_match_the_fake_servers_timing(fake_server):
    SENT.clear()
    result = asyncio.run(run_load(fake_server, "fake", requests(4), extra_body={}, api_key=None,
                                  mode="closed", concurrency=2, progress=False))
    assert result["completed"] == 4 and result["errors"] == {}
    assert all(len(r["itl"]) == TOKENS - 1 for r in result["records"])
    # what the server really did (its sleeps only ever overrun the aim)
    assert len(SENT) == 4 and all(len(s["tokens"]) == TOKENS for s in SENT)
    ttft = [s["tokens"][0] - s["arrived"] for s in SENT]
    e2e = [s["tokens"][-1] - s["arrived"] for s in SENT]
    tpot = [(s["tokens"][-1] - s["tokens"][0]) / (TOKENS - 1) for s in SENT]
    itl = [b - a for s in SENT for a, b in zip(s["tokens"], s["tokens"][1:])]
    assert min(ttft) >= TTFT * 0.95 and min(itl) >= ITL * 0.95
    # the load generator's view of it: the client side adds only the connection and the
    # delivery of each chunk
    assert result["ttft_ms"]["p50"] == pytest.approx(1000 * statistics.median(ttft), abs=30)
    assert result["tpot_ms"]["mean"] == pytest.approx(1000 * statistics.mean(tpot), abs=3)
    assert result["itl_ms"]["p50"] == pytest.approx(1000 * statistics.median(itl), abs=3)
    assert result["e2e_ms"]["p50"] == pytest.approx(1000 * statistics.median(e2e), abs=40)
    # two at a time, two waves
    span = max(s["tokens"][-1] for s in SENT) - min(s["arrived"] for s in SENT)
    assert result["duration_s"] == pytest.approx(span, abs=0.1)
    assert span == pytest.approx(2 * max(e2e), rel=0.25)
    assert result["output_token_throughput"] == pytest.approx(4 * TOKENS / result["duration_s"])


def test_errors_are_counted_by_status(fake_server):
    reqs = requests(2) + requests(3, content="overload")
    result = asyncio.run(run_load(fake_server, "fake", reqs, extra_body={}, api_key=None,
                                  mode="open", rate=float("inf"), progress=False))
    assert result["completed"] == 2 and result["errors"] == {"429": 3}


def test_goodput_under_slo(fake_server):
    tight = asyncio.run(run_load(fake_server, "fake", requests(2), extra_body={}, api_key=None,
                                 mode="closed", concurrency=2, ttft_slo=0.1, progress=False))
    loose = asyncio.run(run_load(fake_server, "fake", requests(2), extra_body={}, api_key=None,
                                 mode="closed", concurrency=2, ttft_slo=1.0, tpot_slo=0.2,
                                 progress=False))
    assert tight["goodput"] == 0.0
    assert loose["goodput"] == pytest.approx(2 / loose["duration_s"])


def test_poisson_arrivals_have_the_requested_rate_and_burstiness():
    gaps = arrival_gaps(20000, rate=4.0, burstiness=1.0, seed=1)
    assert statistics.mean(gaps) == pytest.approx(0.25, rel=0.03)
    assert statistics.stdev(gaps) == pytest.approx(0.25, rel=0.05)  # exponential: sd = mean
    bursty = arrival_gaps(20000, rate=4.0, burstiness=0.25, seed=1)
    assert statistics.mean(bursty) == pytest.approx(0.25, rel=0.05)
    assert statistics.stdev(bursty) == pytest.approx(0.5, rel=0.1)  # sd = mean / sqrt(shape)
    assert arrival_gaps(3, float("inf"), 1.0, 0) == [0.0, 0.0, 0.0]


def test_server_view_reads_histogram_deltas():
    before = ('vllm:time_to_first_token_seconds_sum{model_name="m"} 1.0\n'
              'vllm:time_to_first_token_seconds_count{model_name="m"} 2\n')
    after = ('vllm:time_to_first_token_seconds_sum{model_name="m"} 2.5\n'
             'vllm:time_to_first_token_seconds_count{model_name="m"} 5\n')
    view = server_view(before, after)
    assert view["ttft_count"] == 3 and view["ttft_mean"] == pytest.approx(0.5)
    assert view["tpot_mean"] is None
