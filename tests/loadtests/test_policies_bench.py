"""`bench policies` and `bench capacity` bookkeeping (no engine)."""

from __future__ import annotations

import pytest

from loadtests.capacity import capacity_markdown
from loadtests.policies import FULL, matrix_markdown, matrix_summary, parse_runs


def test_parse_runs_is_the_cartesian_product_with_typed_budgets():
    runs = parse_runs("snapkv,h2o", "0.5,512")
    assert [r.label for r in runs] == ["snapkv@0.5", "snapkv@512", "h2o@0.5", "h2o@512"]
    assert runs[1].body() == {"kv_policy": {"name": "snapkv", "budget": 512}}
    assert FULL.body() == {"kv_policy": {"name": "full", "budget": None}}


@pytest.mark.parametrize("argv, message", [
    (["policies", "--policies", "snapkv", "--budgets", "0.5,half"],
     "bench policies: --budgets '0.5,half': give ratios"),
    (["policies", "--policies", "snapkvv", "--budgets", "0.5"],
     "bench policies: unknown kv_policy 'snapkvv'; valid names: "),
    (["sparse", "--runs", "lsh@dense"], "bench sparse: 'lsh@dense': the density after @"),
    (["rag", "--runs", "drop@0.1/wide"], "bench rag: 'drop@0.1/wide': runs are MODE@"),
    (["capacity", "--policies", "chunkkv", "--budgets", "0.35,0..2"],
     "bench capacity: --budgets '0.35,0..2'"),
])
def test_a_mistaken_run_list_ends_the_bench_before_any_request(argv, message):
    from loadtests import cli

    # nothing listens on port 9: a bench that went on to ask the server would say so instead
    with pytest.raises(SystemExit) as stop:
        cli.main([argv[0], "--url", "http://127.0.0.1:9", *argv[1:], "--out", "/nonexistent"])
    assert str(stop.value).startswith(message)


def record(id_, length, score, tokens):
    return {"id": id_, "task": "t", "length": length, "score": score, "tokens": tokens,
            "error": None}


def test_matrix_summary_scores_each_run_against_full_of_the_same_length():
    records = {
        "full": [record("a", 2048, 1.0, [1, 2]), record("b", 2048, 1.0, [3]),
                 record("c", 4096, 0.5, [4])],
        "snapkv@0.5": [record("a", 2048, 1.0, [1, 2]), record("b", 2048, 0.0, [9]),
                       record("c", 4096, 0.5, [4])],
    }
    rows = {(r["run"], r["length"]): r for r in matrix_summary(records)}
    snap = rows[("snapkv@0.5", 2048)]
    assert snap["score"] == 50.0 and snap["of_full"] == 0.5
    assert snap["identical"] == 0.5 and snap["token_agreement"] == 0.5
    assert rows[("snapkv@0.5", 4096)]["of_full"] == 1.0
    assert "| snapkv@0.5 | 2048 | 2 | 50.0 | 50.0% | 50.0% | 50.0% |" in matrix_markdown(
        list(rows.values()), "t")


def test_capacity_markdown_states_ratios():
    row = {"run": "snapkv@0.35", "completed": 8, "running_mean": 6.0, "running_max": 7,
           "running_vs_full": 2.5, "kv_usage_mean": 0.5, "requests_per_pool": 12.0,
           "per_pool_vs_full": 2.6, "output_tok_s": 40.0,
           "throughput_vs_full": 2.1, "ttft_ms_p50": 900, "tpot_ms_p50": 80, "preemptions": 0}
    assert "| 6.00 / 7 | 2.50x | 50% | 12.0 | 2.60x | 40.0 | 2.10x |" in capacity_markdown(
        [row], "t")


def test_sparse_runs_parse_with_dense_first_and_a_dense_repeat():
    from loadtests.sparse import DENSE, DENSE_AGAIN
    from loadtests.sparse import parse_runs as sparse_runs

    runs = sparse_runs("vertical_slash@0.2,dense,lsh,block_topk@0.1:mass=0.9:local=256",
                       {"min_len": 1024})
    assert [r.label for r in runs] == [DENSE, "vertical_slash@0.2", DENSE_AGAIN, "lsh",
                                       "block_topk@0.1:mass=0.9:local=256"]
    assert runs[0].attention == runs[2].attention == {"name": "dense"}
    assert runs[1].attention == {"name": "sparse", "method": "vertical_slash",
                                 "min_len": 1024, "density": 0.2}
    assert runs[3].attention == {"name": "sparse", "method": "lsh", "min_len": 1024}
    assert runs[4].attention == {"name": "sparse", "method": "block_topk", "min_len": 1024,
                                 "density": 0.1, "mass": 0.9, "local": 256}
    with pytest.raises(ValueError, match="run parameters are :name=value"):
        sparse_runs("lsh:mass")
    with pytest.raises(ValueError, match="density after @ must be a number, got 'x'"):
        sparse_runs("lsh@x")
    # a bare word is the string it is (JSON would refuse it); numbers and booleans typed
    assert sparse_runs("lsh:pattern=fast:exact=true")[1].attention == {
        "name": "sparse", "method": "lsh", "pattern": "fast", "exact": True}
    assert runs[0].body()["cache_salt"] != runs[0].body()["cache_salt"]  # every prefill cold


def test_sparse_summary_gives_speed_up_and_the_density_the_server_counted():
    from loadtests.sparse import DENSE, sparse_markdown, sparse_summary

    def timed(rec, ttft, attended=0, causal=0):
        return {**rec, "ttft_s": ttft, "prompt_tokens": 4000, "pairs_attended": attended,
                "pairs_causal": causal}

    records = {DENSE: [timed(record("a", 4096, 1.0, [1]), 8.0),
                       timed(record("b", 4096, 1.0, [2]), 2.0)],
               "vertical_slash@0.2": [timed(record("a", 4096, 1.0, [1]), 4.0, 30, 100),
                                      timed(record("b", 4096, 1.0, [3]), 2.0, 10, 100)]}
    rows = {r["run"]: r for r in sparse_summary(records)}
    sparse = rows["vertical_slash@0.2"]
    assert sparse["ttft_speedup"] == pytest.approx(2 ** 0.5)  # geometric mean of 2x and 1x
    assert sparse["sparse_density"] == pytest.approx(0.2)  # 40 of 200 pairs
    assert "sparse_density" not in rows[DENSE]  # nothing went sparse
    table = sparse_markdown(list(rows.values()), "t")
    assert "| density of sparse chunks |" in table
    assert ("| vertical_slash@0.2 | 4096 | 2 | 3.00 | 1500 | 1.41x | 20.0% | 100.0 | 100.0% "
            "| 50.0% | 50.0% |") in table
    assert "| dense | 4096 | 2 | 5.00 | 1250 | 1.00x | — | 100.0 | 100.0% | 100.0% |" in table
    # the RAG bench's rows have no counts: no such column
    for row in rows.values():
        row.pop("sparse_density", None)
    assert "density" not in sparse_markdown(list(rows.values()), "t")
