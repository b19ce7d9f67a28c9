"""Policy-aware wrapper of vLLM's FlashAttention backend (`FLASH_ATTN`, CUDA hosts)."""

from __future__ import annotations

from vllm.v1.attention.backends.flash_attn import FlashAttentionBackend, FlashAttentionImpl

from attention_backends.policy_aware.base import PolicyAwareImplMixin


class PolicyAwareFlashAttnImpl(PolicyAwareImplMixin, FlashAttentionImpl):
    pass


class PolicyAwareFlashAttnBackend(FlashAttentionBackend):
    # get_name() stays "FLASH_ATTN", as for the CPU wrapper.

    @staticmethod
    def get_impl_cls() -> type[PolicyAwareFlashAttnImpl]:
        return PolicyAwareFlashAttnImpl
