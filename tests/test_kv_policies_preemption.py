"""KV policies under memory pressure: a server whose KV memory holds two of these requests
under `full` must preempt; requests under `full` still return exactly their solo output,
and compressed ones (their policy re-run after the recompute) complete."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import longserve_eager, metric_value
from tests.test_kv_policies_http import body, metrics, run

pytestmark = pytest.mark.engine

KV_MEMORY = "64MiB"  # 22 blocks of 128 tokens for this model (23 KiB of KV per token)


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    srv = longserve_eager(tmp_path_factory.mktemp("small") / "longserve.log",
                          "--kv-cache-memory", KV_MEMORY, "--max-model-len", "2048",
                          "--max-num-seqs", "8").start()
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def prompts():
    from transformers import AutoTokenizer

    from loadtests.tasks import build_sample
    from server.model_store import prepare

    tokenizer = AutoTokenizer.from_pretrained(str(prepare()[0]))
    return [build_sample("niah_single", 900, i, 5, tokenizer) for i in range(4)]


def test_preemption_keeps_full_requests_exact(small_server, prompts):
    auth: dict = {}
    long_run = {"max_tokens": 200, "ignore_eos": True}
    solo = [run(small_server, auth, body(s, salt=uuid.uuid4().hex, **long_run))[0]
            for s in prompts[:2]]
    before = metric_value(metrics(small_server, auth), "vllm:num_preemptions_total")
    out = run(small_server, auth,
              body(prompts[0], salt=uuid.uuid4().hex, **long_run),
              body(prompts[2], {"name": "snapkv", "budget": 0.3}, salt=uuid.uuid4().hex,
                   **long_run),
              body(prompts[1], salt=uuid.uuid4().hex, **long_run),
              body(prompts[3], {"name": "h2o", "budget": 0.3}, salt=uuid.uuid4().hex,
                   **long_run))
    assert metric_value(metrics(small_server, auth), "vllm:num_preemptions_total") > before
    assert [out[0], out[2]] == solo
    assert len(out[1]) == len(out[3]) == 200
