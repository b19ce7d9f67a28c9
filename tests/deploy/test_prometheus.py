"""A real Prometheus (Debian's, unpacked by deploy/install.sh --dev) scrapes the server,
authenticating as a ServiceMonitor would, and the TTFT and TPOT histograms read back
through its HTTP API agree with the server's own `/metrics`."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from loadtests.servers import free_port
from tests.conftest import API_KEY, metric_value

pytestmark = pytest.mark.engine

PROMETHEUS = Path(sys.executable).parent.parent / "prometheus" / "usr" / "bin" / "prometheus"


@pytest.fixture(scope="module")
def prometheus(server, tmp_path_factory):
    assert PROMETHEUS.exists(), f"{PROMETHEUS} missing: run `bash deploy/install.sh --dev`"
    root = tmp_path_factory.mktemp("prometheus")
    target = server.url.removeprefix("http://")
    (root / "prometheus.yml").write_text(f"""
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: longserve
    metrics_path: /metrics
    authorization:
      type: Bearer
      credentials: {API_KEY}
    static_configs:
      - targets: ["{target}"]
""")
    port = free_port()
    log = open(root / "prometheus.log", "w")
    proc = subprocess.Popen(
        [str(PROMETHEUS), f"--config.file={root / 'prometheus.yml'}",
         f"--storage.tsdb.path={root / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (root / "prometheus.log").read_text()[-2000:]
            try:
                if httpx.get(url + "/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def query(prometheus: str, expr: str) -> list[dict]:
    body = httpx.get(prometheus + "/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def scalar(prometheus: str, expr: str) -> float | None:
    result = query(prometheus, expr)
    return float(result[0]["value"][1]) if result else None


def test_prometheus_reads_the_latency_histograms(server, auth, client, model_name, prometheus):
    for i in range(3):
        stream = client.chat.completions.create(
            model=model_name, messages=[{"role": "user", "content": f"Count to {i + 3}."}],
            max_tokens=12, temperature=0, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    text = httpx.get(server.url + "/metrics", headers=auth).text
    expected = {name: metric_value(text, name) for name in (
        "vllm:time_to_first_token_seconds_count", "vllm:inter_token_latency_seconds_count")}
    assert all(v >= 3 for v in expected.values()), expected
    deadline = time.monotonic() + 30
    while True:  # scraped every second: wait for a scrape after the requests
        seen = {name: scalar(prometheus, f"sum({name})") for name in expected}
        if all(seen[n] is not None and seen[n] >= expected[n] for n in expected):
            break
        assert time.monotonic() < deadline, (seen, expected)
        time.sleep(1)
    assert query(prometheus, 'up{job="longserve"}')[0]["value"][1] == "1"
    for name in ("vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds"):
        p99 = scalar(prometheus, f"histogram_quantile(0.99, sum by (le) ({name}_bucket))")
        assert p99 is not None and 0 < p99 < 60, (name, p99)
    bounds = {float(r["metric"]["le"]) for r in query(
        prometheus, "vllm:time_to_first_token_seconds_bucket")}
    assert max(b for b in bounds if b != float("inf")) >= 600  # minutes-long prefills fit
