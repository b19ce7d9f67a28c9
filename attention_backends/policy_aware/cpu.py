"""Policy-aware wrapper of vLLM's CPU attention backend (`CPU_ATTN`).

CPU cache layout, per layer: (blocks, kv_heads, block_size, 2 * head_dim) as storage,
but inside a (block, head) the kernel arranges keys (and possibly values) in its own
ISA-specific tiling. Rather than hard-code that tiling, `_layout` asks the kernel's own
writer where each (token, dim) lands, once per layer type, and reads/writes through it.
Reads of the `vec` tiling (keys dim-major, values token-major; fp32 everywhere, bf16 and
fp16 on CPUs without AMX) are strided views instead of that general gather: decode under a
packing policy reads every pinned block of every layer on each step.
"""

from __future__ import annotations

import dataclasses

import torch
from vllm import _custom_ops as ops
from vllm.v1.attention.backends.cpu_attn import (
    CPUAttentionBackend, CPUAttentionBackendImpl, CPUAttentionMetadata,
    CPUAttentionMetadataBuilder,
)

from attention_backends.policy_aware.base import PolicyAwareBuilderMixin, PolicyAwareImplMixin

_LAYOUTS: dict[tuple, tuple[torch.Tensor, torch.Tensor, bool]] = {}


def vec_codes(block_size: int, dim: int) -> torch.Tensor:
    """`_layout`'s codes of the vec tiling: a block's keys stored (dim, block), its
    values (block, dim)."""
    keys = (torch.arange(block_size).view(1, -1) * dim + torch.arange(dim).view(-1, 1)).flatten()
    return torch.cat([keys, block_size * dim + torch.arange(block_size * dim)])


def rows_metadata(md: CPUAttentionMetadata, rows: list[int], *, num_heads: int,
                  num_kv_heads: int, head_dim: int, dtype: torch.dtype, isa: str,
                  kv_cache_dtype: str) -> tuple[CPUAttentionMetadata, torch.Tensor]:
    """The metadata of some of a batch's requests (`rows`, ascending) as the kernel would
    see them alone, with the scheduler metadata built for them; and their tokens' indices
    in the batch."""
    index = torch.tensor(rows)
    lengths = (md.query_start_loc[1:] - md.query_start_loc[:-1])[index]
    starts = md.query_start_loc.tolist()
    tokens = torch.cat([torch.arange(starts[r], starts[r + 1]) for r in rows])
    query_start_loc = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(
        md.query_start_loc.dtype)
    seq_lens = md.seq_lens[index]
    scheduler = ops.cpu_attn_get_scheduler_metadata(
        num_reqs=len(rows), num_heads=num_heads, num_kv_heads=num_kv_heads,
        head_dim=head_dim, seq_lens=seq_lens, dtype=dtype, query_start_loc=query_start_loc,
        causal=True, sliding_window_size=-1, isa=isa, enable_kv_split=False,
        kv_cache_dtype=kv_cache_dtype)
    sub = dataclasses.replace(
        md, num_actual_tokens=len(tokens), max_query_len=int(lengths.max()),
        query_start_loc=query_start_loc, max_seq_len=int(seq_lens.max()), seq_lens=seq_lens,
        block_table=md.block_table[index], slot_mapping=md.slot_mapping[tokens],
        scheduler_metadata=scheduler)
    return sub, tokens


class PolicyAwareCPUImpl(PolicyAwareImplMixin, CPUAttentionBackendImpl):
    # A subclass rather than a wrapper object: vLLM's CPU metadata builder finds
    # sliding-window layers with isinstance(layer.impl, CPUAttentionBackendImpl).

    def _layout(self, layer, kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """For every storage element of one (block, head): which logical entry it holds,
        as an index into keys (t * head_dim + d) followed by values; the inverse
        permutation (where each logical entry is stored); whether it is the vec tiling."""
        block_size, dim = kv_cache.shape[2], self.head_size
        key = (kv_cache.dtype, block_size, dim, getattr(layer, "isa", None))
        layout = _LAYOUTS.get(key)
        if layout is None:
            probe = torch.zeros(1, 1, block_size, 2 * dim, dtype=kv_cache.dtype)
            tokens = torch.arange(block_size).view(-1, 1, 1).expand(-1, 1, dim)
            dims = torch.arange(dim).view(1, 1, -1).expand(block_size, 1, -1)
            found = []
            for code in (tokens, dims):  # small integers: exact in bf16/fp16
                probe.zero_()
                code = code.to(kv_cache.dtype).contiguous()
                self.do_kv_cache_update(layer, code, code, probe, torch.arange(block_size))
                found.append(probe.flatten().long())
            codes = found[0] * dim + found[1]
            half = codes.numel() // 2
            codes[half:] += half  # values follow keys in the logical order
            layout = _LAYOUTS[key] = (codes, codes.argsort(),
                                      torch.equal(codes, vec_codes(block_size, dim)))
        return layout

    def read_blocks(self, layer, kv_cache, blocks, length):
        return self.read_raw(layer, kv_cache, kv_cache[blocks], length)

    def read_raw(self, layer, kv_cache, raw, length):
        _, inverse, vec = self._layout(layer, kv_cache)
        n, heads, block_size, _ = raw.shape
        storage = raw.flatten(2)  # (n, heads, 2 * block * dim)
        if vec:
            keys, values = storage.view(n, heads, 2, -1).unbind(2)
            entries = (keys.view(n, heads, self.head_size, block_size).transpose(2, 3),
                       values.view(n, heads, block_size, self.head_size))
        else:
            gathered = storage[..., inverse].view(n, heads, 2, block_size, self.head_size)
            entries = gathered.unbind(2)
        return tuple(e.transpose(0, 1).flatten(1, 2)[:, :length] for e in entries)

    def write_blocks(self, layer, kv_cache, blocks, keys, values):
        codes, _, _ = self._layout(layer, kv_cache)
        heads, block_size = kv_cache.shape[1], kv_cache.shape[2]

        def per_block(t):  # (heads, n * block, dim) -> (n, heads, block * dim)
            return t.reshape(heads, len(blocks), block_size * self.head_size).transpose(0, 1)

        logical = torch.cat([per_block(keys), per_block(values)], dim=-1)
        kv_cache[blocks] = logical[..., codes].to(kv_cache.dtype).view(
            len(blocks), *kv_cache.shape[1:])

    def read_stream(self, layer, kv_cache, blocks):
        raw = kv_cache[blocks].view(torch.uint8)  # (n, heads, block, bytes per entry)
        return raw.transpose(0, 1).reshape(raw.shape[1], -1)

    def write_stream(self, layer, kv_cache, blocks, stream):
        n, (heads, *entry) = len(blocks), kv_cache.shape[1:]
        raw = stream.view(heads, n, -1).transpose(0, 1).contiguous()
        kv_cache[blocks] = raw.view(kv_cache.dtype).view(n, heads, *entry)


class PolicyAwareCPUBuilder(PolicyAwareBuilderMixin, CPUAttentionMetadataBuilder):
    pass


class PolicyAwareCPUBackend(CPUAttentionBackend):
    # get_name() stays "CPU_ATTN": vLLM maps a layer's backend back to its enum by name.

    @staticmethod
    def get_impl_cls() -> type[PolicyAwareCPUImpl]:
        return PolicyAwareCPUImpl

    @staticmethod
    def get_builder_cls() -> type[PolicyAwareCPUBuilder]:
        return PolicyAwareCPUBuilder
