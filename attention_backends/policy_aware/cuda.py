"""Policy-aware wrapper of vLLM's FlashAttention backend (`FLASH_ATTN`, CUDA hosts).

FlashAttention cache layout, per layer: (2, blocks, block_size, kv_heads, head_dim).
Not exercised on this project's CPU CI; compaction under full CUDA graphs needs the
compacted block table in the graph's persistent buffer, which `remap` does not do yet."""

from __future__ import annotations

from vllm.v1.attention.backends.flash_attn import (
    FlashAttentionBackend, FlashAttentionImpl, FlashAttentionMetadataBuilder,
)

from attention_backends.policy_aware.base import PolicyAwareBuilderMixin, PolicyAwareImplMixin


class PolicyAwareFlashAttnImpl(PolicyAwareImplMixin, FlashAttentionImpl):

    def read_blocks(self, layer, kv_cache, blocks, length):
        blocks = blocks.to(kv_cache.device)
        keys, values = (kv_cache[i][blocks].flatten(0, 1)[:length].transpose(0, 1).cpu()
                        for i in (0, 1))
        return keys, values

    def write_blocks(self, layer, kv_cache, blocks, keys, values):
        block_size, heads = kv_cache.shape[2], kv_cache.shape[3]
        blocks = blocks.to(kv_cache.device)
        for i, entries in enumerate((keys, values)):
            kv_cache[i][blocks] = entries.to(kv_cache).transpose(0, 1).reshape(
                len(blocks), block_size, heads, -1)


class PolicyAwareFlashAttnBuilder(PolicyAwareBuilderMixin, FlashAttentionMetadataBuilder):
    pass


class PolicyAwareFlashAttnBackend(FlashAttentionBackend):
    # get_name() stays "FLASH_ATTN", as for the CPU wrapper.

    @staticmethod
    def get_impl_cls() -> type[PolicyAwareFlashAttnImpl]:
        return PolicyAwareFlashAttnImpl

    @staticmethod
    def get_builder_cls() -> type[PolicyAwareFlashAttnBuilder]:
        return PolicyAwareFlashAttnBuilder
