"""Start a server as a user would (a subprocess with its own log) and wait for it: used by
`bench compare` (stock vLLM beside longserve) and by the test suite."""

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

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    phases_seen: list[str] = field(default_factory=list)  # /ready answers, in order

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [*self.argv, "--port", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, **self.env}, start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float = 600.0, ready_path: str = "/ready") -> ServerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                r = httpx.get(self.url + ready_path, timeout=2)
                phase = r.json().get("status") if r.content else str(r.status_code)
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


def longserve(log_path: Path, *flags: str, env: dict | None = None) -> ServerProcess:
    return ServerProcess([str(BIN / "longserve"), "serve", *flags], log_path, env=env or {})


def stock_vllm(log_path: Path, *flags: str) -> ServerProcess:
    """vLLM's own OpenAI server with every general plugin disabled (VLLM_PLUGINS set to a
    value that names none), so nothing of longserve runs in it."""
    return ServerProcess([sys.executable, "-m", "vllm.entrypoints.openai.api_server", *flags],
                         log_path, env={"VLLM_PLUGINS": ""})
