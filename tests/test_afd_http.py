"""Attention-FFN disaggregation on CPU (gloo), on the default model in float32.

One FFN worker (`longserve afd-ffn`) serves two attention servers (`longserve serve
--afd-role attention`), the 2:1 topology: one sends each layer as one micro-batch, the
other as two in flight. Both must give the monolithic server's greedy tokens, for single
and batched requests. Then the worker is killed: /ready turns false; restarted, it rejoins
the running servers; killed during a stream with no restart, the stream ends with an
error within the deadline (no hang) and the server reports itself not ready.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import httpx
import pytest

from loadtests.servers import BIN, free_port
from tests.conftest import FLOAT32, metric_value

pytestmark = pytest.mark.engine

TIMEOUT = 4.0  # --afd-timeout
COMMON = (*FLOAT32, "--kv-cache-memory", "512MiB", "--max-num-seqs", "4")
PROMPTS = ["The capital of France is", "Once upon a time",
           "1, 2, 3, 4,"]


class Worker:
    def __init__(self, addresses: list[str], log) -> None:
        self.argv = [str(BIN / "longserve"), "afd-ffn", "--attention", ",".join(addresses),
                     "--dtype", "float32", "--device", "cpu", "--threads", "1"]
        self.log = log
        self.proc = None

    def start(self) -> Worker:
        self.proc = subprocess.Popen(self.argv, stdout=self.log.open("a"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture(scope="module")
def afd(tmp_path_factory):
    from tests.conftest import longserve_eager

    logs = tmp_path_factory.mktemp("afd")
    ports = [free_port(), free_port()]
    servers = {
        "mono": longserve_eager(logs / "mono.log", *COMMON),
        **{f"afd{k}": longserve_eager(
            logs / f"afd{k}.log", *COMMON, "--afd-role", "attention", "--afd-port",
            str(port), "--afd-micro-batches", str(k), "--afd-timeout", str(TIMEOUT))
           for k, port in zip((1, 2), ports)},
    }
    worker = Worker([f"127.0.0.1:{p}" for p in ports], logs / "ffn.log")
    try:
        for srv in servers.values():
            srv.start()
        worker.start()
        for srv in servers.values():
            srv.wait_ready()
        yield servers, worker
    finally:
        for srv in servers.values():
            srv.stop()
        if worker.proc.poll() is None:
            worker.kill()


def chat(url: str, prompt: str, max_tokens: int = 24) -> list[int]:
    resp = httpx.post(url + "/v1/completions", timeout=120, json={
        "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
        "return_token_ids": True})
    assert resp.status_code == 200, resp.text
    return resp.json()["choices"][0]["token_ids"]


def batched(url: str) -> list[list[int]]:
    resp = httpx.post(url + "/v1/completions", timeout=120, json={
        "prompt": PROMPTS, "max_tokens": 24, "temperature": 0, "return_token_ids": True})
    assert resp.status_code == 200, resp.text
    return [c["token_ids"] for c in sorted(resp.json()["choices"], key=lambda c: c["index"])]


@pytest.mark.parametrize("name", ["afd1", "afd2"])
def test_greedy_tokens_match_the_monolithic_server(afd, name):
    servers, _ = afd
    mono, split = servers["mono"].url, servers[name].url
    assert chat(split, PROMPTS[0]) == chat(mono, PROMPTS[0])
    assert batched(split) == batched(mono)


def test_a_restarted_worker_rejoins_running_servers(afd):
    servers, worker = afd
    worker.kill()
    url = servers["afd2"].url
    deadline = time.monotonic() + 10
    while httpx.get(url + "/ready").status_code == 200:
        assert time.monotonic() < deadline, "/ready stayed true with the FFN worker gone"
        time.sleep(0.2)
    body = httpx.get(url + "/ready").json()
    assert body["status"] == "ffn-unavailable" and "shard 0/1" in body["detail"]
    assert metric_value(httpx.get(url + "/metrics").text, "longserve_ready") == 0
    refused = httpx.post(url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2})
    assert refused.status_code == 503 and refused.headers["retry-after"]
    worker.start()
    for srv in (servers["afd1"], servers["afd2"]):
        srv.wait_ready(timeout=30)
        assert chat(srv.url, PROMPTS[0]) == chat(servers["mono"].url, PROMPTS[0])
    assert metric_value(httpx.get(url + "/metrics").text, "longserve_ready") == 1


def test_a_worker_killed_mid_stream_fails_the_stream_not_hangs(afd):
    servers, worker = afd
    srv = servers["afd1"]
    started = time.monotonic()
    events, error = 0, None
    with httpx.stream("POST", srv.url + "/v1/completions", timeout=60, json={
            "prompt": PROMPTS[2], "max_tokens": 2000, "ignore_eos": True,
            "temperature": 0, "stream": True}) as resp:
        assert resp.status_code == 200
        try:
            for line in resp.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    error = event["error"]
                    break
                events += 1
                if events == 5:
                    worker.kill()
        except httpx.RemoteProtocolError as exc:  # the server went away mid-stream
            error = {"message": str(exc)}
    assert 5 <= events < 2000 and error is not None
    assert time.monotonic() - started < 3 * TIMEOUT + 20  # the deadline, not a hang
    ready = httpx.get(srv.url + "/ready", timeout=5) if srv.proc.poll() is None else None
    assert ready is None or ready.status_code == 503
