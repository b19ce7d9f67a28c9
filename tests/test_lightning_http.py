"""A hybrid lightning/softmax model in Hugging Face's MiniMax format, built here with
random weights (`loadtests.checkpoints.minimax`: transformers' `MiniMaxForCausalLM`,
saved as config + safetensors in the original MiniMax layout), served by `longserve
serve --model DIR`, against a plain PyTorch forward of the same weights (transformers' own
implementation).

Three lightning layers (block 32) and one softmax layer; prompts longer than a lightning
block, sent as one batch of mixed lengths, with prefill chunked at 48 tokens so that
chunks cut through lightning blocks and mix with other requests' decodes."""

from __future__ import annotations

import httpx
import pytest
import torch

from tests.conftest import metric_value

pytestmark = pytest.mark.engine

CHUNK = 48


@pytest.fixture(scope="module")
def minimax(tmp_path_factory):
    from loadtests.checkpoints import minimax as build
    from tests.conftest import serve_random_checkpoint

    yield from serve_random_checkpoint(tmp_path_factory, "minimax", build, CHUNK)


def reference(model_dir, prompt: list[int], steps: int) -> tuple[list[int], list[float]]:
    from transformers import MiniMaxForCausalLM

    model = MiniMaxForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=steps, do_sample=False,
                             output_logits=True, return_dict_in_generate=True)
    tokens = out.sequences[0, len(prompt):].tolist()
    logprobs = [torch.log_softmax(step[0].float(), -1)[t].item()
                for step, t in zip(out.logits, tokens)]
    return tokens, logprobs


def test_served_tokens_and_logprobs_match_the_pytorch_forward(minimax):
    server, model_dir = minimax
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 49000, (n,), generator=gen).tolist() for n in (5, 70, 150)]
    def steps() -> float:  # engine steps that produced output
        return metric_value(httpx.get(server.url + "/metrics").text,
                            "vllm:iteration_tokens_total_count")

    before = steps()
    resp = httpx.post(server.url + "/v1/completions", timeout=300, json={
        "prompt": prompts, "max_tokens": 8, "temperature": 0, "logprobs": 1,
        "return_token_ids": True})
    assert resp.status_code == 200, resp.text
    choices = sorted(resp.json()["choices"], key=lambda c: c["index"])
    for prompt, choice in zip(prompts, choices):
        tokens, logprobs = reference(model_dir, prompt, 8)
        assert choice["token_ids"] == tokens, len(prompt)
        served = choice["logprobs"]["token_logprobs"]
        assert max(abs(a - b) for a, b in zip(served, logprobs)) < 1e-3, len(prompt)
    # unchunked, the three prefills share one step and 7 decode steps follow; chunks of 48
    # make the 150-token prompt take at least 4 steps while the others decode
    assert steps() - before >= 150 // CHUNK + 8


def test_chat_streams_through_the_hybrid_model(minimax):
    from tests.conftest import assert_chat_streams

    assert_chat_streams(minimax[0])


def test_kv_policies_are_refused_on_a_hybrid_model(minimax):
    server, _ = minimax
    resp = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
        "kv_policy": {"name": "snapkv", "budget": 0.5}})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "kv_policy"
    assert "lightning" in resp.json()["error"]["message"]
