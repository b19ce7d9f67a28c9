"""Policy-aware wrapper of vLLM's CPU attention backend (`CPU_ATTN`)."""

from __future__ import annotations

from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend, CPUAttentionBackendImpl

from attention_backends.policy_aware.base import PolicyAwareImplMixin


class PolicyAwareCPUImpl(PolicyAwareImplMixin, CPUAttentionBackendImpl):
    # A subclass rather than a wrapper object: vLLM's CPU metadata builder finds
    # sliding-window layers with isinstance(layer.impl, CPUAttentionBackendImpl).
    pass


class PolicyAwareCPUBackend(CPUAttentionBackend):
    # get_name() stays "CPU_ATTN": vLLM maps a layer's backend back to its enum by name.

    @staticmethod
    def get_impl_cls() -> type[PolicyAwareCPUImpl]:
        return PolicyAwareCPUImpl
