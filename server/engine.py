"""Engine wiring: longserve settings -> vLLM's own argument namespace -> `AsyncLLM`.

The namespace comes from vLLM's `vllm serve` parser, so any vLLM flag the user passes
after longserve's own (`longserve serve --dtype float32 ...`) means what it means there.
"""

from __future__ import annotations

import json
import logging
import os
from argparse import Namespace
from pathlib import Path

from server.settings import Settings

logger = logging.getLogger(__name__)

WORKER_EXTENSION = "server.worker_extension.LongserveWorkerExtension"
CPU_DEFAULT_KV_CACHE = 2 * 2**30


def resolve_model(settings: Settings) -> tuple[str, str]:
    """(model path or hub id, served name); prepares the embedded model if none is given."""
    if settings.model:
        model = settings.model
    else:
        from server import model_store

        model = str(model_store.prepare()[0])
    name = settings.served_model_name or Path(model.rstrip("/")).name
    return model, name


def _kv_cache_bytes(settings: Settings) -> int | None:
    if settings.kv_cache_memory is not None:
        return settings.kv_cache_memory
    from vllm.platforms import current_platform

    # vLLM's CPU default asks for more memory than it sees free on small hosts.
    return CPU_DEFAULT_KV_CACHE if current_platform.is_cpu() else None


def bf16_emulated(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this x86 CPU lacks native bf16 matmuls (neither AVX512-BF16 nor AMX-BF16):
    there vLLM's CPU path runs bf16 layers several times slower than float32."""
    try:
        with Path(cpuinfo).open() as lines:
            flags = next((line.split(":", 1)[1].split() for line in lines
                          if line.startswith("flags")), None)
    except OSError:
        return False
    return flags is not None and not {"avx512_bf16", "amx_bf16"} & set(flags)


def vllm_namespace(settings: Settings, model: str, name: str, extra: list[str],
                   hints: bool = True) -> Namespace:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from vllm.platforms import current_platform

    from cache_policies.registry import SCHEDULER, WORKERS

    argv = ["--model", model, "--served-model-name", name,
            "--worker-extension-cls", WORKER_EXTENSION, "--scheduler-cls", SCHEDULER]
    if current_platform.device_type in WORKERS:
        argv += ["--worker-cls", WORKERS[current_platform.device_type]]
    if settings.max_model_len:
        argv += ["--max-model-len", str(settings.max_model_len)]
    if settings.max_num_seqs:
        argv += ["--max-num-seqs", str(settings.max_num_seqs)]
    if settings.enforce_eager:
        argv.append("--enforce-eager")
    if settings.rag_projection:  # refrag rows reach the model as prompt embeddings
        argv.append("--enable-prompt-embeds")
    kv_bytes = _kv_cache_bytes(settings)
    if kv_bytes is not None:
        if os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            logger.warning("VLLM_CPU_KVCACHE_SPACE is set and overrides --kv-cache-memory")
        argv += ["--kv-cache-memory-bytes", str(kv_bytes)]
    if settings.afd_role == "attention":  # Python calls to the workers in every layer
        argv += ["--enforce-eager", "--hf-overrides",
                 json.dumps({"architectures": [afd_architecture(model)]})]
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv + extra)
    if settings.kv_policy != "full" and args.kv_cache_dtype not in ("auto", None):
        raise ValueError(f"--kv-policy {settings.kv_policy} needs the KV cache in the model's "
                         f"dtype, not --kv-cache-dtype {args.kv_cache_dtype}")
    if (hints and current_platform.is_cpu() and args.dtype in ("auto", "bfloat16")
            and bf16_emulated()):
        logger.warning("this CPU has no native bf16 (no avx512_bf16 or amx_bf16 flag): a bf16 "
                       "model runs its matmuls emulated; on such a host --dtype float32 "
                       "prefilled 4k-7k-token prompts 2.0-2.4x faster (BENCHMARKS.md, issue 6)")
    if settings.attention == "sparse":
        if not (current_platform.is_cpu() or current_platform.is_cuda()):
            raise ValueError("--attention sparse runs on CPU and CUDA engines only")
        if args.kv_cache_dtype not in ("auto", None):
            raise ValueError("--attention sparse needs the KV cache in the model's dtype, not "
                             f"--kv-cache-dtype {args.kv_cache_dtype}")
    return args


def afd_architecture(model: str) -> str:
    """The AFD attention-side architecture for a model directory's own, or a ValueError
    naming what AFD serves. (Before the model is resolved, `model` is a placeholder.)"""
    from server.afd.model import ARCHITECTURES

    config = Path(model) / "config.json"
    if not config.is_file():
        return next(iter(ARCHITECTURES.values()))
    own = (json.loads(config.read_text()).get("architectures") or ["?"])[0]
    if own not in ARCHITECTURES:
        raise ValueError(f"--afd-role attention serves {', '.join(ARCHITECTURES)} models, "
                         f"not {own}")
    return ARCHITECTURES[own]


def start_afd(settings: Settings):
    """Host the store AFD workers join and tell the engine's worker how to reach them."""
    from server.afd.model import ENV
    from server.afd.monitor import AFDMonitor

    monitor = AFDMonitor(settings.afd_port, settings.afd_ffn_workers,
                         settings.afd_micro_batches, settings.afd_timeout)
    os.environ[ENV] = monitor.engine_env()
    return monitor


def export_policy_env(settings: Settings) -> None:
    """Settings the engine core's scheduler reads (it runs in a child process)."""
    import tempfile

    from attention_backends.sparse.config import DEFAULT_ENV as ATTENTION_ENV
    from cache_policies.offload import ENV as OFFLOAD_ENV
    from cache_policies.offload import make_store
    from cache_policies.scheduler import RECOMPRESS_ENV
    from cache_policies.stats import ENV as STATS_ENV

    from attention_backends.mfa import mode as mfa_mode

    mfa_mode()  # a bad LONGSERVE_MFA_DECODE fails here, not in the engine's first step
    make_store(settings.kv_offload)  # a Redis that does not answer fails here, at start-up
    os.environ[OFFLOAD_ENV] = settings.kv_offload
    os.environ[RECOMPRESS_ENV] = str(settings.kv_recompress_every)
    os.environ[STATS_ENV] = os.path.join(tempfile.mkdtemp(prefix="longserve-"), "kv-stats.json")
    os.environ[ATTENTION_ENV] = json.dumps(deployment_attention(settings).applied())


def deployment_attention(settings: Settings):
    """The server's default attention (what a request that names none gets)."""
    from server.openai.protocol import AttentionSpec

    if settings.attention == "sparse":
        return AttentionSpec(name="sparse", **settings.sparse_config)
    return AttentionSpec(name="dense")


def create_engine(args: Namespace, stat_loggers: list):
    """Start vLLM's AsyncLLM in this process (its engine core runs in a child process).
    Call from inside the running event loop so its output handler starts at once."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.async_llm import AsyncLLM

    return AsyncLLM.from_engine_args(
        AsyncEngineArgs.from_cli_args(args),
        usage_context=UsageContext.OPENAI_API_SERVER,
        stat_loggers=stat_loggers,
    )
