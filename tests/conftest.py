"""Shared fixtures. The engine tests run against one real `longserve serve` process on the
real default model, started once per test session in eager mode."""

from __future__ import annotations

import pytest

from loadtests.servers import ServerProcess, longserve

pytest_plugins = ["tests.report_fallback", "tests.report_early"]

API_KEY = "test-key-7c1e"
# Limits of the shared server, small enough for the limit tests to reach them.
MAX_NUM_SEQS = 4
MAX_QUEUED = 2
MAX_REQUEST_BYTES = 1 << 20
KV_RECOMPRESS_EVERY = 256
RAG_MAX_TOKENS = 20000
# The engine test servers compute in float32. Many CPUs these tests run on lack native
# bf16 (no avx512_bf16); there vLLM emulates it and prefills 2.0-2.4x slower than in
# float32 (BENCHMARKS.md, issue 6), so in bf16 the suite's time depends on the host.
# KV memory sizes are set for float32's 46 KiB of KV per token of the default model
# (bf16: 23 KiB). The servers of test_lifecycle and test_admission_http keep the model's
# bf16 (short prompts), so the served default dtype is still exercised end to end.
FLOAT32 = ("--dtype", "float32")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A real redis-server of the module's own (module scope: each test module that asks
    gets a fresh, empty one)."""
    import shutil
    import subprocess
    import time

    import redis

    from loadtests.servers import free_port

    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed: run `bash deploy/install.sh --dev`"
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path_factory.mktemp("redis"))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def longserve_eager(log_path, *extra: str, env: dict | None = None) -> ServerProcess:
    return longserve(log_path, "--enforce-eager", *extra, env=env)


def last_core() -> dict[str, str]:
    """Environment that binds a second server's engine to the last CPU core: vLLM's CPU
    worker binds to core 0 by default, so two servers asked at once would share it."""
    import os

    return {"VLLM_CPU_OMP_THREADS_BIND": str(max(os.sched_getaffinity(0)))}


@pytest.fixture(scope="session")
def cskv_artifact(tmp_path_factory) -> str:
    """CSKV bases of the default model at full rank (64 of 64 channels, keys and values):
    a rotation of each head's channels, so that only the quantization of `cskv8`/`cskv4`
    loses anything. Calibrated on 2k tokens (~20 s)."""
    from cache_policies.compress.cskv_calibrate import calibrate
    from server.model_store import prepare

    out = tmp_path_factory.mktemp("cskv")
    calibrate(prepare()[0], out, 64, 64, tokens=2048)
    return str(out)


@pytest.fixture(scope="session")
def server(tmp_path_factory, cskv_artifact) -> ServerProcess:
    srv = longserve_eager(
        tmp_path_factory.mktemp("server") / "longserve.log",
        *FLOAT32,
        "--api-key", API_KEY,
        "--kv-cache-memory", "2GiB",
        "--max-num-seqs", str(MAX_NUM_SEQS),
        "--max-queued-requests", str(MAX_QUEUED),
        "--max-request-bytes", str(MAX_REQUEST_BYTES),
        "--kv-recompress-every", str(KV_RECOMPRESS_EVERY),
        "--rag-max-tokens", str(RAG_MAX_TOKENS),
        "--cskv", cskv_artifact,
    ).start()
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def tokenizer():
    """The default model's tokenizer."""
    from transformers import AutoTokenizer

    from server.model_store import prepare

    return AutoTokenizer.from_pretrained(str(prepare()[0]))


@pytest.fixture(scope="session")
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="session")
def model_name(client) -> str:
    return client.models.list().data[0].id


def engine_core(server: ServerProcess):
    """The server's vLLM EngineCore child process (psutil.Process)."""
    import contextlib

    import psutil

    cores = []
    for proc in psutil.Process(server.proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "EngineCore" in proc.name() + " ".join(proc.cmdline()):
                cores.append(proc)
    assert len(cores) == 1, f"engine core processes: {cores}"
    return cores[0]


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (Prometheus text)."""
    from loadtests.prom import value

    return value(text, name, **labels)


def assert_chat_streams(server) -> None:
    """A 6-token streamed chat through the official client, usage included: the served
    model works end to end through the chat template and the OpenAI route."""
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "word " * 60}], max_tokens=6,
        temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens == 6 and chunks[-1].usage.prompt_tokens > 60


def serve_random_checkpoint(tmp_path_factory, name: str, build, chunk: int):
    """A random checkpoint written by `build(directory)` (`loadtests.checkpoints`), served
    in float32 with prefill chunked at `chunk` tokens; yields (server, model directory)."""
    model_dir = build(tmp_path_factory.mktemp(name))
    srv = longserve_eager(tmp_path_factory.mktemp(f"{name}-log") / "longserve.log",
                          "--model", str(model_dir), *FLOAT32,
                          "--max-num-batched-tokens", str(chunk), "--max-num-seqs", "4",
                          "--kv-cache-memory", "256MiB").start()
    try:
        yield srv.wait_ready(), model_dir
    finally:
        srv.stop()
