"""Shared fixtures. The engine tests run against one real `longserve serve` process on the
real default model, started once per test session in eager mode."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

BIN = Path(sys.executable).parent
API_KEY = "test-key-7c1e"
# Limits of the shared server, small enough for the limit tests to reach them.
MAX_NUM_SEQS = 4
MAX_QUEUED = 2
MAX_REQUEST_BYTES = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """A server started as a user would start it, with its log kept for failures."""

    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    phases_seen: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [*self.argv, "--port", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, **self.env}, start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float = 300.0, ready_path: str = "/ready") -> ServerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                r = httpx.get(self.url + ready_path, timeout=2)
                phase = r.json().get("status", str(r.status_code)) if r.content else str(r.status_code)
                if not self.phases_seen or self.phases_seen[-1] != phase:
                    self.phases_seen.append(phase)
                if r.status_code == 200:
                    return self
            except (httpx.TransportError, ValueError):
                pass
            time.sleep(0.25)
        raise TimeoutError(f"server not ready in {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> int | None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode if self.proc else None


def longserve_argv(*extra: str) -> list[str]:
    return [str(BIN / "longserve"), "serve", "--enforce-eager", *extra]


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> ServerProcess:
    srv = ServerProcess(
        longserve_argv(
            "--api-key", API_KEY,
            "--kv-cache-memory", "1GiB",
            "--max-num-seqs", str(MAX_NUM_SEQS),
            "--max-queued-requests", str(MAX_QUEUED),
            "--max-request-bytes", str(MAX_REQUEST_BYTES),
        ),
        tmp_path_factory.mktemp("server") / "longserve.log",
    ).start()
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def model_name(client) -> str:
    return client.models.list().data[0].id


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (Prometheus text)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
