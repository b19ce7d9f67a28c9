"""The plugin path, proven on a running engine: every attention layer runs longserve's
backend, and greedy outputs are token-identical to stock vLLM (plugins disabled)."""

from __future__ import annotations

import httpx
import pytest

from loadtests.servers import stock_vllm as stock_vllm_server
from tests.conftest import API_KEY, FLOAT32

pytestmark = pytest.mark.engine

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers and explain why they are prime.",
    "Translate 'good morning' into Spanish and German.",
    "Summarise the plot of Romeo and Juliet in two sentences.",
    "Explain what a KV cache is in a transformer, briefly.",
]


@pytest.fixture(scope="module")
def stock_vllm(server, auth, tmp_path_factory):
    """vLLM's own OpenAI server on the same checkpoint, memory and flags, with every
    general plugin disabled (VLLM_PLUGINS matches none), so it runs vLLM's CPU_ATTN."""
    info = httpx.get(server.url + "/info", headers=auth).json()
    srv = stock_vllm_server(
        tmp_path_factory.mktemp("stock") / "vllm.log",
        "--model", info["model"], "--served-model-name", info["served_model_name"],
        "--enforce-eager", *FLOAT32, "--kv-cache-memory-bytes", str(info["kv_cache_memory_bytes"]),
        "--max-num-seqs", str(info["max_num_seqs"]),
    ).start()
    try:
        yield srv.wait_ready(ready_path="/health")
    finally:
        srv.stop()


def attention_report(server, auth) -> dict:
    (worker,) = httpx.get(server.url + "/info", headers=auth).json()["attention"]
    return worker


def test_every_attention_layer_runs_the_longserve_backend(server, auth, client, model_name):
    before = attention_report(server, auth)
    assert before["num_layers"] == 30
    assert before["backends"] == {"attention_backends.sparse.cpu.SparseCPUBackend": 30}
    assert before["impls"] == {"attention_backends.sparse.cpu.SparseCPUImpl": 30}
    client.chat.completions.create(model=model_name, max_tokens=5,
                                   messages=[{"role": "user", "content": "Hello"}])
    after = attention_report(server, auth)
    # prefill + 4 decode steps, each through all 30 layers, at least
    assert after["forward_calls"] - before["forward_calls"] >= 30 * 5


def greedy_tokens(base_url: str, api_key: str, model: str, prompt: str) -> list[int]:
    resp = httpx.post(base_url + "/v1/chat/completions", timeout=120,
                      headers={"Authorization": f"Bearer {api_key}"},
                      json={"model": model, "messages": [{"role": "user", "content": prompt}],
                            "max_tokens": 48, "temperature": 0, "return_token_ids": True})
    resp.raise_for_status()
    return resp.json()["choices"][0]["token_ids"]


def test_greedy_outputs_identical_to_stock_vllm(server, stock_vllm, model_name):
    for prompt in PROMPTS:
        ours = greedy_tokens(server.url, API_KEY, model_name, prompt)
        stock = greedy_tokens(stock_vllm.url, "unused", model_name, prompt)
        assert len(ours) > 5
        assert ours == stock, prompt
