"""The multi-document QA generator and the `bench rag`/`bench context` helpers."""

from __future__ import annotations

import pytest

from loadtests.multidoc import build_multidoc, single_prompt
from loadtests.rag import context_summary, parse_rag_runs
from loadtests.tasks import count_tokens



@pytest.mark.parametrize("index", [0, 1])
def test_multidoc_sample_fits_and_holds_its_answers(tokenizer, index):
    sample = build_multidoc(20, 3000, index, 5, tokenizer)
    docs = sample.meta["documents"]
    assert len(docs) == 20 and len(sample.answers) == 1 + index
    assert 3000 - 20 * 40 <= sample.prompt_tokens <= 3000  # a sentence per document per step
    assert sample.prompt_tokens == count_tokens(tokenizer, single_prompt(sample))
    for answer, where in zip(sample.answers, sample.meta["answer_documents"]):
        assert answer in docs[where]["text"]
        assert sum(answer in d["text"] for d in docs) == 1
    assert sample == build_multidoc(20, 3000, index, 5, tokenizer)  # seeded
    assert single_prompt(sample)[-1] == sample.messages[-1]  # the answer prefix


def test_rag_run_specs():
    assert parse_rag_runs("drop@0.1,extractive@0.05/64,drop") == [
        {"mode": "drop", "expand": 0.1},
        {"mode": "extractive", "expand": 0.05, "chunk_tokens": 64},
        {"mode": "drop"}]


def test_context_summary_counts_worker_calls():
    def record(score, workers, error=None):
        return {"task": "t", "length": 4096, "score": score, "error": error, "latency_s": 2.0,
                "usage": None if error else {"total_tokens": 100},
                "context": {"workers": workers}}

    [row] = context_summary({"chain_of_agents": [record(1.0, 3), record(0.0, 1),
                                                 record(0.0, 0, error="400: no")]})
    assert row["samples"] == 3 and row["errors"] == 1
    assert row["score"] == pytest.approx(100 / 3) and row["calls"] == 3.0
