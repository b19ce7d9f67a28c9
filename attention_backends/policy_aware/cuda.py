"""Policy-aware wrapper of vLLM's FlashAttention backend (`FLASH_ATTN`, CUDA hosts).

vLLM 0.32's FlashAttention cache, per layer: (blocks, kv_heads, block_size, 2 * head_dim),
which the kernel reads as a key and a value view, each (blocks, block_size, kv_heads,
head_dim) (`flash_views`). Not exercised on a GPU engine by this project's CI (the layout
is tested on CPU tensors); compaction under full CUDA graphs needs the compacted block
table in the graph's persistent buffer, which `remap` does not do yet."""

from __future__ import annotations

import torch
from vllm.v1.attention.backends.flash_attn import (
    FlashAttentionBackend, FlashAttentionImpl, FlashAttentionMetadataBuilder,
)

from attention_backends.policy_aware.base import PolicyAwareBuilderMixin, PolicyAwareImplMixin


def flash_views(kv_cache: torch.Tensor, head_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The key and value views of one layer's cache, as FlashAttention reads them: each
    (blocks, block_size, kv_heads, head_dim), unit stride over head_dim."""
    keys, values = kv_cache.transpose(1, 2).split(head_size, dim=-1)
    return keys, values


class PolicyAwareFlashAttnImpl(PolicyAwareImplMixin, FlashAttentionImpl):

    def read_blocks(self, layer, kv_cache, blocks, length):
        blocks = blocks.to(kv_cache.device)
        keys, values = (view[blocks].flatten(0, 1)[:length].transpose(0, 1).cpu()
                        for view in flash_views(kv_cache, self.head_size))
        return keys, values

    def write_blocks(self, layer, kv_cache, blocks, keys, values):
        blocks = blocks.to(kv_cache.device)
        for view, entries in zip(flash_views(kv_cache, self.head_size), (keys, values)):
            _, block_size, heads, dim = view.shape
            view[blocks] = entries.to(view).transpose(0, 1).reshape(
                len(blocks), block_size, heads, dim)


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
