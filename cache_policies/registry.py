"""Names a request may give in `kv_policy.name`, mapped to policy classes (lazy imports)."""

from __future__ import annotations

import importlib

from cache_policies.base import KVPolicy, KVPolicyConfig

KV_POLICIES: dict[str, str] = {
    "full": "cache_policies.full:FullCache",
    "streaming": "cache_policies.evict.streaming:StreamingLLM",
    "snapkv": "cache_policies.evict.snapkv:SnapKV",
    "h2o": "cache_policies.evict.h2o:H2O",
    "tova": "cache_policies.evict.tova:TOVA",
    "chunkkv": "cache_policies.evict.chunkkv:ChunkKV",
    "kvmerger": "cache_policies.merge.kvmerger:KVMerger",
    "d2o": "cache_policies.merge.d2o:D2O",
    "kivi8": "cache_policies.compress.kivi:KIVI8",
    "kivi4": "cache_policies.compress.kivi:KIVI4",
    "kivi4v3": "cache_policies.compress.kivi:KIVI4V3",
    "chunkkv_kivi8": "cache_policies.compress.chunk_kivi:ChunkKVKIVI8",
    "kivi2": "cache_policies.compress.kivi:KIVI2",
    "cskv": "cache_policies.compress.cskv:CSKV16",
    "cskv8": "cache_policies.compress.cskv:CSKV8",
    "cskv4": "cache_policies.compress.cskv:CSKV4",
    "quest": "cache_policies.retrieve.quest:Quest",
    "actqkv": "cache_policies.retrieve.actqkv:ActQKV",
    "shadow4": "cache_policies.retrieve.shadow:Shadow4",
}

# The engine-side glue: vLLM's scheduler and worker classes with KV policies built in.
SCHEDULER = "cache_policies.scheduler.PolicyScheduler"
WORKERS: dict[str, str] = {  # vllm.platforms.current_platform.device_type -> class
    "cpu": "cache_policies.worker.PolicyCPUWorker",
    "cuda": "cache_policies.worker.PolicyGPUWorker",
}


def policy_names() -> list[str]:
    return sorted(KV_POLICIES)


def policy_class(name: str) -> type[KVPolicy]:
    try:
        module, _, attr = KV_POLICIES[name].partition(":")
    except KeyError:
        raise ValueError(
            f"unknown kv_policy {name!r}; valid names: {', '.join(policy_names())}"
        ) from None
    return getattr(importlib.import_module(module), attr)


def make_policy(config: KVPolicyConfig) -> KVPolicy:
    return policy_class(config.name)(config)


def make_config(name: str, budget: float | int | None = None) -> KVPolicyConfig:
    """A validated config: the name is registered and the budget suits that policy."""
    cls = policy_class(name)
    config = KVPolicyConfig(name=name, budget=budget)
    cls.validate(config)
    return config
