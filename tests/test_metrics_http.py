"""/metrics: vLLM's own `vllm:*` metrics, unchanged, plus `longserve_*`."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import metric_value

pytestmark = pytest.mark.engine

HISTOGRAMS = [
    "vllm:time_to_first_token_seconds_count",
    "vllm:inter_token_latency_seconds_count",
    "vllm:request_time_per_output_token_seconds_count",
    "vllm:e2e_request_latency_seconds_count",
]
GAUGES = ["vllm:kv_cache_usage_perc", "vllm:num_requests_running", "vllm:num_requests_waiting",
          "vllm:num_preemptions_total"]


def scrape(server, auth) -> str:
    resp = httpx.get(server.url + "/metrics", headers=auth)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    return resp.text


def test_latency_histograms_grow_with_requests(server, auth, client, model_name):
    before = scrape(server, auth)
    for stream in (False, True, True):
        resp = client.chat.completions.create(
            model=model_name, messages=[{"role": "user", "content": "Name a color."}],
            max_tokens=12, temperature=0, stream=stream)
        if stream:
            list(resp)
    after = scrape(server, auth)
    for name in HISTOGRAMS:
        assert metric_value(after, name) >= metric_value(before, name) + 3, name
    for name in GAUGES:
        assert name.removesuffix("_total") in after, name


def test_longserve_metrics_are_exported(server, auth, client, model_name):
    client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "Hi"}],
                                   max_tokens=3)
    text = scrape(server, auth)
    assert metric_value(text, "longserve_ready") == 1
    assert metric_value(text, "longserve_requests_total", endpoint="chat", kv_policy="full",
                        context_strategy="reject") >= 1
    assert metric_value(text, "longserve_build_info",
                        attention_backend="attention_backends.sparse.cpu."
                                          "SparseCPUBackend") == 1
    assert "longserve_requests_in_flight" in text


def test_error_responses_are_counted(server, auth):
    before = metric_value(scrape(server, auth), "longserve_request_errors_total", status="404")
    httpx.post(server.url + "/v1/chat/completions", headers=auth,
               json={"model": "missing", "messages": [{"role": "user", "content": "x"}]})
    after = metric_value(scrape(server, auth), "longserve_request_errors_total", status="404")
    assert after == before + 1
