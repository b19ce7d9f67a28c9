"""`longserve bench` end to end against the real server: a tiny quality run, a tiny load
run, and a tiny side-by-side comparison with stock vLLM."""

from __future__ import annotations

import json
import subprocess

import pytest

from loadtests.servers import BIN
from tests.conftest import API_KEY

pytestmark = pytest.mark.engine


def bench(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "longserve"), "bench", *args, "--no-progress"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_tiny_quality_run_with_fidelity(server, tmp_path):
    common = ["--url", server.url, "--api-key", API_KEY, "--tasks", "niah_single,kv_uuid",
              "--lengths", "512", "--samples", "2", "--out", str(tmp_path)]
    bench("quality", *common, "--label", "ref", "--x-value", "0.5")
    proc = bench("quality", *common, "--label", "again", "--reference",
                 str(tmp_path / "ref" / "quality.json"), "--x-value", "1.0",
                 "--extra-body", '{"kv_policy": {"name": "full"}}')
    result = json.loads((tmp_path / "again" / "quality.json").read_text())
    overall = result["summary"]["overall"]
    assert overall["samples"] == 4 and overall["errors"] == 0
    # greedy, same prompts, same server: the reference run is reproduced token for token
    assert overall["fidelity"] == {"samples": 4, "identical": 1.0, "token_agreement": 1.0}
    assert all(r["prompt_tokens"] <= 512 and r["tokens"] for r in result["records"])
    assert (tmp_path / "again" / "quality.png").stat().st_size > 10_000
    assert "| niah_single | 512 | 2 |" in proc.stdout
    bench("plot", str(tmp_path / "ref" / "quality.json"), str(tmp_path / "again" / "quality.json"),
          "--x", "x_value", "--out", str(tmp_path / "plots"))
    assert (tmp_path / "plots" / "quality-vs-x_value.png").stat().st_size > 10_000


def test_tiny_load_run_agrees_with_server_metrics(server, tmp_path):
    bench("load", "--url", server.url, "--api-key", API_KEY, "--prompt-lens", "256:1,512:1",
          "--output-len", "8-16", "--num-requests", "4", "--concurrency", "1,2",
          "--ttft-slo", "30", "--out", str(tmp_path), "--label", "tiny")
    runs = json.loads((tmp_path / "tiny" / "load.json").read_text())["runs"]
    assert [r["label"] for r in runs] == ["c=1", "c=2"]
    for run in runs:
        assert run["completed"] == 4 and run["errors"] == {}
        assert all(8 <= r["output_tokens"] <= 16 for r in run["records"])
        server_view = run["server_metrics"]
        assert server_view["ttft_count"] == 4
        # the client's clock and vLLM's histograms see the same latencies
        assert 0.8 < server_view["ttft_client_over_server"] < 1.3
        assert 0.8 < server_view["tpot_client_over_server"] < 1.3
    assert (tmp_path / "tiny" / "load.png").is_file()


def test_tiny_compare_against_stock_vllm(tmp_path):
    proc = bench("compare", "load", "--prompt-lens", "256", "--output-len", "8",
                 "--num-requests", "2", "--concurrency", "1", "--rounds", "1",
                 "--kv-cache-memory-bytes", str(512 << 20),
                 "--server-flags", "--enforce-eager --max-model-len 2048",
                 "--out", str(tmp_path))
    rows = json.loads((tmp_path / "compare.json").read_text())["rows"]
    metrics = {row["metric"] for row in rows}
    assert {"TTFT mean", "TPOT mean", "output tok/s"} <= metrics
    assert all(row["stock"] > 0 and row["longserve"] > 0 for row in rows)
    assert "longserve / stock" in proc.stdout
