"""/health and /ready through a server's life: loading, ready, engine death."""

from __future__ import annotations

import signal
import time

import httpx
import psutil
import pytest

from tests.conftest import longserve_eager

pytestmark = pytest.mark.engine


def test_ready_is_false_while_loading_and_health_is_alive(server):
    # The session server was watched from its first answer on: it said "loading" (503)
    # before "ready" (200).
    assert server.phases_seen[0] == "loading"
    assert server.phases_seen[-1] == "ready"


def test_engine_death_makes_ready_false_and_exits_nonzero(tmp_path):
    srv = longserve_eager(tmp_path / "longserve.log", "--max-model-len", "1024",
                          "--kv-cache-memory", "256MiB").start()
    try:
        srv.wait_ready()
        engine_core = [p for p in psutil.Process(srv.proc.pid).children(recursive=True)
                       if "EngineCore" in " ".join(p.cmdline() + [p.name()])]
        assert engine_core, "no EngineCore child process found"
        engine_core[0].send_signal(signal.SIGKILL)
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
