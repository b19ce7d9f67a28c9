"""Unit tests: settings, request extensions, context strategy, admission, plugin wiring,
the error mapper and the vLLM internals longserve depends on."""

from __future__ import annotations

import importlib
import importlib.metadata

import pytest
from pydantic import ValidationError

from server.settings import Settings, parse_bytes


@pytest.mark.parametrize("text, expected", [
    ("2GiB", 2 * 2**30), ("512MiB", 512 * 2**20), ("1.5GB", 1_500_000_000), ("4096", 4096),
    (" 16 mib ", 16 * 2**20),
])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["lots", "2XB", "-1GiB", ""])
def test_parse_bytes_rejects_nonsense(text):
    with pytest.raises(ValueError):
        parse_bytes(text)


def test_settings_read_env_and_init_wins(monkeypatch):
    monkeypatch.setenv("LONGSERVE_PORT", "9100")
    monkeypatch.setenv("LONGSERVE_KV_CACHE_MEMORY", "1GiB")
    assert Settings().port == 9100 and Settings().kv_cache_memory == 2**30
    assert Settings(port=9200).port == 9200


@pytest.mark.parametrize("kwargs, fragment", [
    ({"kv_policy": "nope"}, "valid names: actqkv, chunkkv, chunkkv_kivi8, cskv, cskv4, cskv8, "
                               "d2o, full, h2o, kivi2, kivi4, kivi4v3, kivi8, kvmerger, quest, "
                               "shadow4, snapkv, streaming, tova"),
    ({"kv_policy": "snapkv", "kv_budget": 0}, "keep at least 1 token"),
    ({"context_strategy": "nope"}, "valid names: chain_of_agents, rag, reject, truncate_middle"),
    ({"kv_policy": "full", "kv_budget": 0.5}, "takes no budget"),
    ({"port": 0}, "greater than or equal to 1"),
    ({"unknown_flag": 1}, "Extra inputs"),
])
def test_settings_reject_bad_values(kwargs, fragment):
    with pytest.raises(ValidationError, match=fragment):
        Settings(**kwargs)


# --- request extensions -------------------------------------------------------------

def chat_request(**extra):
    from server.openai.protocol import LongserveChatCompletionRequest

    return LongserveChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], **extra)


def test_extensions_travel_in_extra_args():
    req = chat_request(kv_policy={"name": "full"}, context_strategy="reject",
                       vllm_xargs={"other": 1})
    params = req.to_sampling_params(16, {})
    assert params.extra_args == {  # what the engine reads; the context is the server's
        "other": 1,
        "longserve": {"kv_policy": {"name": "full", "budget": None}, "attention": None},
    }


@pytest.mark.parametrize("budget", [0.0, 1.5, -3, 0])
def test_budget_validation(budget):
    from cache_policies.base import KVPolicyConfig

    with pytest.raises(ValueError, match="budget"):
        KVPolicyConfig(name="full", budget=budget)


def test_tokenization_ceiling_keeps_model_limit_in_messages():
    req = chat_request()

    class _Cfg:
        max_model_len = 1000

    params = req.build_tok_params(_Cfg())
    assert params.max_total_tokens == 1000
    assert params.max_input_tokens == 8000


def test_client_truncation_keeps_vllm_rules():
    class _Cfg:
        max_model_len = 1000

    params = chat_request(truncate_prompt_tokens=100).build_tok_params(_Cfg())
    assert params.max_input_tokens == 1000


# --- context strategy -----------------------------------------------------------------

def test_reject_allows_exact_fit_and_refuses_one_over():
    from server.context.reject import Reject
    from server.errors import ContextLengthExceeded

    Reject().check(prompt_tokens=90, requested_tokens=10, max_model_len=100, field="messages")
    Reject().check(prompt_tokens=99, requested_tokens=None, max_model_len=100, field="messages")
    with pytest.raises(ContextLengthExceeded, match=r"requested 101 tokens \(90 in the messages, "
                                                    r"11 in the completion\)"):
        Reject().check(prompt_tokens=90, requested_tokens=11, max_model_len=100,
                       field="messages")
    with pytest.raises(ContextLengthExceeded, match="at least 101"):
        Reject().check(prompt_tokens=100, requested_tokens=None, max_model_len=100,
                       field="prompt")


# --- admission --------------------------------------------------------------------------

def test_admission_counts_running_slots_then_queue():
    from server.errors import QueueFull
    from server.limits import Admission

    adm = Admission(max_queued_requests=2)
    adm.max_num_seqs = 3
    tickets = [adm.admit() for _ in range(5)]  # 3 running + 2 waiting
    assert adm.waiting() == 2
    with pytest.raises(QueueFull) as info:
        adm.admit()
    assert info.value.headers["Retry-After"] == "1"
    tickets[0].release()
    tickets[0].release()  # releasing twice is harmless
    adm.admit()
    assert adm.in_flight == 5


def test_admission_refuses_more_sequences_than_it_could_ever_hold():
    from server.errors import LongserveError, QueueFull
    from server.limits import Admission

    adm = Admission(max_queued_requests=2)
    adm.max_num_seqs = 3
    with pytest.raises(LongserveError) as info:
        adm.admit(6)  # 3 running + 2 queued: never
    assert not isinstance(info.value, QueueFull) and info.value.status == 400
    assert info.value.param == "n"
    adm.admit(5).release()  # fits an idle server


def test_admission_uses_engine_waiting_but_not_when_idle():
    from server.errors import QueueFull
    from server.limits import Admission

    adm = Admission(max_queued_requests=1)
    adm.max_num_seqs = 8
    adm.engine_waiting = 5  # stale count from the last busy step: no request in flight
    ticket = adm.admit()  # idle engine: admitted
    adm.engine_waiting = 1  # the engine holds one back for KV memory
    with pytest.raises(QueueFull):
        adm.admit()
    ticket.release()


# --- plugin and backend wiring ----------------------------------------------------------

def test_plugin_entry_point_is_declared():
    eps = importlib.metadata.entry_points(group="vllm.general_plugins")
    assert {ep.name: ep.value for ep in eps}["longserve"] == "server.plugin:register"


def test_register_is_idempotent_and_takes_the_cpu_slot():
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    from server.plugin import register

    register()
    register()
    slot = AttentionBackendEnum.CPU_ATTN
    assert slot.get_path() == "attention_backends.sparse.cpu.SparseCPUBackend"
    backend = slot.get_class()
    assert backend.get_name() == "CPU_ATTN"  # vLLM maps layers back to the enum by name
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackendImpl

    assert issubclass(backend.get_impl_cls(), CPUAttentionBackendImpl)


def test_cpu_platform_selects_the_longserve_backend():
    import torch
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends.registry import AttentionBackendEnum
    from vllm.v1.attention.selector import AttentionSelectorConfig

    from server.plugin import register

    register()
    assert current_platform.device_type == "cpu"
    config = AttentionSelectorConfig(head_size=64, dtype=torch.bfloat16, kv_cache_dtype="auto",
                                     block_size=128)
    # even when another backend is asked for, as `--attention-backend` would
    path = current_platform.get_attn_backend_cls(AttentionBackendEnum.FLEX_ATTENTION, config)
    assert path == "attention_backends.sparse.cpu.SparseCPUBackend"


# --- vLLM pin and internals -------------------------------------------------------------

def test_vllm_is_the_pinned_release():
    from vllm import __version__

    from server.vllm_compat import VLLM_VERSION

    assert __version__ == VLLM_VERSION


def test_vllm_internals_we_rely_on_exist():
    from server.vllm_compat import INTERNALS

    for module, attr_path in INTERNALS:
        obj = importlib.import_module(module)
        for part in attr_path.split("."):
            obj = getattr(obj, part)  # AttributeError names what vLLM changed


# --- error mapper -------------------------------------------------------------------------

@pytest.mark.parametrize("exc, status, type_", [
    ("queue", 429, "RateLimitError"),
    ("vllm-validation", 400, "BadRequestError"),
    ("engine-dead", 503, "ServiceUnavailableError"),
    ("bug", 500, "InternalServerError"),
])
def test_error_mapper(exc, status, type_):
    import json

    from vllm.exceptions import VLLMValidationError
    from vllm.v1.engine.exceptions import EngineDeadError

    from server.errors import QueueFull, error_response

    exc = {
        "queue": QueueFull("full", headers={"Retry-After": "1"}),
        "vllm-validation": VLLMValidationError("bad value", parameter="top_k", value=-2),
        "engine-dead": EngineDeadError(),
        "bug": KeyError("oops"),
    }[exc]
    resp = error_response(exc)
    body = json.loads(resp.body)
    assert resp.status_code == status
    assert body["error"]["type"] == type_ and body["error"]["code"] == status
    if status == 500:
        assert "oops" not in body["error"]["message"]  # internals are logged, not sent


# --- CLI ----------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, fragment", [
    (["serve", "--no-such-flag", "3"], "unrecognized arguments: --no-such-flag"),
    (["serve", "--kv-policy", "bogus"],
     "unknown kv_policy 'bogus'; valid names: actqkv, chunkkv, chunkkv_kivi8, cskv, cskv4, "
     "cskv8, d2o"),
    (["serve", "--kv-cache-memory", "lots"], "--kv-cache-memory"),
    (["serve", "--attention", "flash"], "--attention: Input should be 'dense' or 'sparse'"),
    (["serve", "--sparse-config", "density=0.3"], "--sparse-config: not JSON"),
    (["serve", "--sparse-config", '{"density": 3}'], "density must be in (0, 1], got 3"),
    (["serve", "--attention", "sparse", "--kv-cache-dtype", "fp8"],
     "--attention sparse needs the KV cache in the model's dtype"),
    (["serve", "--kv-policy", "snapkv", "--kv-cache-dtype", "fp8"],
     "--kv-policy snapkv needs the KV cache in the model's dtype"),
])
def test_serve_rejects_bad_flags_before_loading_anything(capsys, argv, fragment):
    from server.cli import main

    assert main(argv) == 2
    assert fragment in capsys.readouterr().err


@pytest.mark.parametrize("name, dtype, allowed", [
    ("snapkv", "fp8", False), ("kivi4", "fp8_e5m2", False), ("full", "fp8", True),
    ("snapkv", "auto", True), ("quest", "auto", True),
])
def test_policies_need_the_model_kv_dtype(name, dtype, allowed):
    """vLLM's own quantized cache is not readable by the policies: a 400, not garbage."""
    from argparse import Namespace
    from types import SimpleNamespace

    from server.errors import LongserveError
    from server.openai.routes import _fill_defaults

    state = SimpleNamespace(settings=Settings(), vllm_args=Namespace(kv_cache_dtype=dtype))
    request = chat_request(kv_policy={"name": name})
    if allowed:
        _fill_defaults(request, state)
    else:
        with pytest.raises(LongserveError, match="--kv-cache-dtype"):
            _fill_defaults(request, state)


def _state(**settings):
    from argparse import Namespace
    from types import SimpleNamespace

    return SimpleNamespace(settings=Settings(**settings),
                           vllm_args=Namespace(kv_cache_dtype="auto"))


@pytest.mark.parametrize("server, requested, applied", [
    ({}, None, {"name": "dense"}),
    ({"attention": "sparse"}, None, {"name": "sparse", "method": "vertical_slash", "density": 0.2}),
    ({"attention": "sparse", "sparse_config": '{"density": 0.3}'}, "dense", {"name": "dense"}),
    ({"sparse_config": {"density": 0.3}}, {"name": "sparse", "method": "lsh"},
     {"name": "sparse", "method": "lsh", "density": 0.3}),
    ({"attention": "sparse", "sparse_config": {"density": 0.3}}, {"name": "sparse", "density": 0.5},
     {"name": "sparse", "method": "vertical_slash", "density": 0.5}),
], ids=["dense-default", "sparse-default", "request-dense", "request-over-config",
        "request-wins"])
def test_attention_request_over_server_defaults(server, requested, applied):
    from server.openai.routes import _fill_defaults

    request = chat_request(**({"attention": requested} if requested else {}))
    _fill_defaults(request, _state(**server))
    got = request.applied()["attention"]
    assert {k: got[k] for k in applied} == applied


def test_sparse_needs_the_model_kv_dtype():
    from argparse import Namespace
    from types import SimpleNamespace

    from server.errors import LongserveError
    from server.openai.routes import _fill_defaults

    state = SimpleNamespace(settings=Settings(), vllm_args=Namespace(kv_cache_dtype="fp8"))
    with pytest.raises(LongserveError, match="quantized KV cache"):
        _fill_defaults(chat_request(attention="sparse"), state)


def test_workers_read_the_request_then_the_deployment_default(monkeypatch):
    from attention_backends.sparse.config import DEFAULT_ENV
    from attention_backends.sparse.plan import request_config

    monkeypatch.setenv(DEFAULT_ENV, '{"name": "sparse", "method": "lsh", "density": 0.4}')
    assert request_config(None).method == "lsh"  # a request that did not pass the server
    assert request_config({"longserve": {"attention": {"name": "dense"}}}) is None
    config = request_config({"longserve": {"attention": {"name": "sparse", "density": 0.7}}})
    assert (config.method, config.density) == ("vertical_slash", 0.7)
    monkeypatch.setenv(DEFAULT_ENV, '{"name": "dense"}')
    assert request_config({"longserve": {"kv_policy": None}}) is None


def test_requests_without_max_tokens_get_the_default_and_others_what_they_ask():
    """vLLM's default is the rest of the context (minutes of decoding); longserve fills in
    `--default-max-tokens` for requests that set none and caps nothing else (vLLM's
    `get_max_tokens` decides, as it does for every request); a user's own
    `--override-generation-config` max_new_tokens keeps vLLM's meaning, a cap on all."""
    from types import SimpleNamespace

    from vllm.entrypoints.serve.utils.api_utils import get_max_tokens

    from server.engine import vllm_namespace
    from server.openai.serving import default_max_tokens
    from server.settings import Settings

    def budget(serving, asked, prompt=100):
        return get_max_tokens(8192, asked, prompt, serving.default_sampling_params,
                              serving.override_max_tokens)

    args = vllm_namespace(Settings(default_max_tokens=64), "m", "m", [])
    assert not (args.override_generation_config or {}).get("max_new_tokens")
    chat, completion = (SimpleNamespace(override_max_tokens=None, default_sampling_params={})
                        for _ in range(2))
    assert default_max_tokens(chat, completion, default=64) == 64
    for serving in (chat, completion):
        assert budget(serving, None) == 64
        assert budget(serving, 6000) == 6000  # asked for more than the default: granted
        assert budget(serving, None, prompt=8150) == 42  # the rest of the context
    capped = SimpleNamespace(override_max_tokens=7, default_sampling_params={"max_tokens": 7})
    assert default_max_tokens(capped, default=64) == 7
    assert budget(capped, None) == budget(capped, 6000) == 7
    args = vllm_namespace(Settings(), "m", "m", [
        "--override-generation-config", '{"max_new_tokens": 7, "temperature": 0.5}'])
    assert args.override_generation_config == {"max_new_tokens": 7, "temperature": 0.5}


def test_bf16_emulation_is_read_from_the_cpu_flags(tmp_path):
    """The start-up hint towards --dtype float32 fires only on CPUs without bf16 matmuls."""
    from server.engine import bf16_emulated

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw\n")
    assert bf16_emulated(str(info))
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n")
    assert not bf16_emulated(str(info))
    info.write_text("processor\t: 0\nflags\t\t: fpu amx_bf16 amx_tile\n")
    assert not bf16_emulated(str(info))
    info.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")  # no x86 flags line
    assert not bf16_emulated(str(info))
    assert not bf16_emulated(str(tmp_path / "missing"))


def test_bf16_hint_is_logged_once_per_serve(monkeypatch, caplog, capsys):
    """`longserve serve` checks its flags before the app builds the same namespace again:
    only the second build (the one that loads the model) gives the hint."""
    from server import app, cli, engine

    class Loaded(Exception):
        pass

    def build_app(settings, vllm_extra):  # what the app does first, then stop
        built.append(engine.vllm_namespace(settings, "m", "m", vllm_extra))
        raise Loaded

    built = []
    monkeypatch.setattr(engine, "bf16_emulated", lambda: True)
    monkeypatch.setattr(app, "build_app", build_app)
    with caplog.at_level("WARNING", logger="server.engine"), pytest.raises(Loaded):
        cli.main(["serve", "--dtype", "bfloat16"])
    hints = [r for r in caplog.records if "no native bf16" in r.getMessage()]
    assert built and len(hints) == 1
    assert "no native bf16" not in capsys.readouterr().err
