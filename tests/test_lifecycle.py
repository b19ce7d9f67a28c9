"""/health and /ready through a server's life: loading, ready, engine death."""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from tests.conftest import engine_core, longserve_eager

pytestmark = pytest.mark.engine


def test_ready_is_false_while_loading_and_health_is_alive(server):
    # The session server was watched from its first answer on: it said "loading" (503)
    # before "ready" (200).
    assert server.phases_seen[0] == "loading"
    assert server.phases_seen[-1] == "ready"


def test_the_log_carries_vllms_periodic_stats_line(server, client, model_name):
    """As under `vllm serve`: every 10 s with traffic, a line with the requests running
    and waiting and the KV cache usage."""
    client.chat.completions.create(model=model_name, max_tokens=4,
                                   messages=[{"role": "user", "content": "Hi"}])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stats = [line for line in server.log_path.read_text(errors="replace").splitlines()
                 if "Engine 000:" in line and "Running:" in line]
        if stats:
            assert "KV cache usage:" in stats[-1], stats[-1]
            return
        time.sleep(1)
    raise AssertionError("no stats line in 30 s:\n" + server.log_tail())


def test_engine_death_makes_ready_false_and_exits_nonzero(tmp_path):
    srv = longserve_eager(tmp_path / "longserve.log", "--max-model-len", "1024",
                          "--kv-cache-memory", "256MiB").start()
    try:
        srv.wait_ready()
        engine_core(srv).send_signal(signal.SIGKILL)
        seen = set()
        deadline = time.monotonic() + 30
        while srv.proc.poll() is None and time.monotonic() < deadline:
            try:
                r = httpx.get(srv.url + "/ready", timeout=1)
                seen.add((r.status_code, r.json()["status"]))
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        assert (503, "dead") in seen
        assert srv.proc.wait(30) == 1
    finally:
        srv.stop()


def test_sigterm_drains_requests_in_flight_then_exits_zero(tmp_path):
    """Readiness goes false and new requests get 503 at once; the streams in flight run
    to their last token; then the process exits 0.

    The streams are long (480 tokens, several seconds of decode) so that on a loaded
    2-core host, where the engine's threads hold both cores, the checks after SIGTERM
    still land while they run; the test asserts that they did."""
    import json
    import threading

    tokens_each = 480
    srv = longserve_eager(tmp_path / "longserve.log", "--max-model-len", "1024",
                          "--kv-cache-memory", "256MiB", "--drain-seconds", "120").start()
    try:
        srv.wait_ready()
        streams, started = [], threading.Barrier(3, timeout=120)

        def stream(i: int) -> None:
            tokens, done, first = 0, False, True
            with httpx.stream("POST", srv.url + "/v1/chat/completions", timeout=300, json={
                    "messages": [{"role": "user", "content": f"Story number {i}."}],
                    "max_tokens": tokens_each, "ignore_eos": True, "stream": True,
                    "stream_options": {"include_usage": True}}) as resp:
                for line in resp.iter_lines():
                    if line == "data: [DONE]":
                        done = True
                    elif line.startswith("data: "):
                        usage = json.loads(line[6:]).get("usage")
                        tokens = usage["completion_tokens"] if usage else tokens
                        if first:
                            first = False
                            started.wait()
            streams.append((tokens, done))

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        started.wait()  # both streams are under way
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            sent = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            while (ready := http.get("/ready")).status_code == 200:
                assert time.monotonic() < sent + 10, "still ready 10 s after SIGTERM"
                time.sleep(0.05)
            assert ready.json()["status"] == "draining"
            try:
                late = http.post("/v1/chat/completions", json={
                    "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
            except httpx.TransportError as exc:
                raise AssertionError(
                    f"{exc!r} {time.monotonic() - sent:.1f} s after SIGTERM, streams "
                    f"finished: {streams}\n{srv.log_tail()}") from exc
            assert not streams, "the streams ended before the late request was answered"
        assert late.status_code == 503 and late.headers["retry-after"] == "1"
        assert "draining" in late.json()["error"]["message"]
        for t in threads:
            t.join(300)
        assert streams == [(tokens_each, True)] * 2, srv.log_tail()  # nothing lost
        assert srv.proc.wait(60) == 0
    finally:
        srv.stop()
