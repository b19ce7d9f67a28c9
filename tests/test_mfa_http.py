"""A Step-3 text model (MFA attention: 64 query heads x 256 over one shared KV head, MoE)
built here with random weights (`loadtests.checkpoints.step3`), served by `longserve
serve --model DIR`, against a plain PyTorch forward of the same weights
(`tests/step3_reference.py`).

Prompts longer than the prefill chunk (48 tokens) in one batch of mixed lengths: chunks
go through vLLM's kernel while the other requests' decodes take the shared-KV route,
which the route's counter shows."""

from __future__ import annotations

import time

import httpx
import pytest
import torch

from tests.conftest import metric_value

pytestmark = pytest.mark.engine

CHUNK = 48
LAYERS = 3


@pytest.fixture(scope="module")
def step3(tmp_path_factory):
    from loadtests.checkpoints import step3 as build
    from tests.conftest import serve_random_checkpoint

    yield from serve_random_checkpoint(tmp_path_factory, "step3",
                                       lambda d: build(d, layers=LAYERS), CHUNK)


def routed(server) -> float:
    return metric_value(httpx.get(server.url + "/metrics").text,
                        "longserve_mfa_decode_tokens_total", route="shared_kv")


def test_served_tokens_and_logprobs_match_the_pytorch_forward(step3):
    from tests.step3_reference import Step3Reference

    server, model_dir = step3
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 49000, (n,), generator=gen).tolist() for n in (5, 70, 150)]
    before = routed(server)
    resp = httpx.post(server.url + "/v1/completions", timeout=300, json={
        "prompt": prompts, "max_tokens": 8, "temperature": 0, "logprobs": 1,
        "return_token_ids": True})
    assert resp.status_code == 200, resp.text
    reference = Step3Reference(model_dir)
    for prompt, choice in zip(prompts, sorted(resp.json()["choices"],
                                              key=lambda c: c["index"])):
        tokens, logprobs = reference.greedy(prompt, 8)
        assert choice["token_ids"] == tokens, len(prompt)
        served = choice["logprobs"]["token_logprobs"]
        assert max(abs(a - b) for a, b in zip(served, logprobs)) < 1e-3, len(prompt)
    # the workers write their counters at most once a second: one more request flushes
    time.sleep(1.2)
    httpx.post(server.url + "/v1/completions", timeout=60,
               json={"prompt": [5, 6], "max_tokens": 2, "temperature": 0})
    assert routed(server) - before >= 3 * 7 * LAYERS  # 7 decode steps each, every layer


def test_chat_streams_through_the_mfa_model(step3):
    from tests.conftest import assert_chat_streams

    assert_chat_streams(step3[0])
