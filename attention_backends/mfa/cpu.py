"""The shared-KV-head decode route inside longserve's CPU attention impl.

For a layer with one KV head and a wide query side (Step-3: 64 heads x 256), the decode
rows of a batch (one query token each) run `kernels.mfa_decode.cpu.decode`, straight from
vLLM's CPU cache (each block's keys stored dimension-major, values token-major); prefill
rows go to vLLM's kernel as before. vLLM's kernel walks the keys once per query head and
loses to one (heads x dim) x (dim x n) product per request at that width; at narrower
widths it wins (BENCHMARKS.md, issue 9), hence the threshold.

`LONGSERVE_MFA_DECODE`: `auto` (default: one KV head and heads x head_dim >= 16384),
`on` (every layer with one KV head), `off` (vLLM's kernel for all).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from vllm.v1.attention.backend import AttentionType

from attention_backends.mfa import FIELDS, KIND, mode
from attention_backends.policy_aware.base import attend_rows
from attention_backends.policy_aware.cpu import PolicyAwareCPUImpl, rows_metadata
from cache_policies.stats import worker_stats
from kernels.mfa_decode import cpu as mfa_cpu

MIN_QUERY_WIDTH = 16384  # heads x head_dim from which the route wins on this CPU

MFA_STATS = worker_stats(KIND, FIELDS)


@dataclass
class DecodeSplit:
    rows: torch.Tensor  # batch rows with one query token
    tokens: torch.Tensor  # their tokens in the batch
    rest: object | None  # CPUAttentionMetadata of the other rows, or None
    rest_tokens: torch.Tensor | None


class SharedKVDecodeImpl(PolicyAwareCPUImpl):
    _route: bool | None = None  # decided at the first forward with a cache

    def _routes(self, layer, kv_cache: torch.Tensor) -> bool:
        if self._route is None:
            wanted = mode()
            wide = self.num_heads * self.head_size >= MIN_QUERY_WIDTH
            self._route = (
                wanted != "off" and (wanted == "on" or wide) and self.num_kv_heads == 1
                and self.attn_type == AttentionType.DECODER and self.alibi_slopes is None
                and not self.logits_soft_cap and self.sinks is None
                and self.sliding_window == -1 and not self.is_fp8_kv_cache
                and kv_cache.is_contiguous() and self._keys_transposed(layer, kv_cache))
        return self._route

    def _keys_transposed(self, layer, kv_cache: torch.Tensor) -> bool:
        """Whether this ISA's cache keeps a block's keys as (dim, block) and its values
        as (block, dim) (the "vec" kernels do; AMX tiles them otherwise)."""
        return self._layout(layer, kv_cache)[2]

    def attend(self, layer, query, key, value, kv_cache, attn_metadata, output,
               output_scale=None, output_block_scale=None):
        md = attn_metadata
        if (md is None or output_scale is not None or not md.causal
                or md.dynamic_causal is not None or not self._routes(layer, kv_cache)):
            return super().attend(layer, query, key, value, kv_cache, md, output,
                                  output_scale, output_block_scale)
        split = self._split(md, query.dtype, layer.isa)
        if not len(split.rows):  # prefill only
            return super().attend(layer, query, key, value, kv_cache, md, output)
        if split.rest is not None:
            attend_rows(super().attend, layer, query, key, value, kv_cache, split.rest,
                        split.rest_tokens, output)
        blocks, _, block, _ = kv_cache.shape
        storage = kv_cache.view(blocks, 2, block * self.head_size)
        keys = storage[:, 0].view(blocks, 1, self.head_size, block)
        values = storage[:, 1].view(blocks, block, 1, self.head_size)
        out = mfa_cpu.decode(query[split.tokens], keys, values, md.block_table[split.rows],
                             md.seq_lens[split.rows], self.scale, keys_transposed=True)
        output[split.tokens] = out.to(output.dtype)
        MFA_STATS.add("shared_kv", tokens=len(split.rows))
        return output

    def _split(self, md, dtype: torch.dtype, isa: str) -> DecodeSplit:
        """Computed once per step's metadata (every layer of the group shares it)."""
        split = getattr(md, "_shared_kv_split", None)
        if split is None:
            starts = md.query_start_loc
            single = (starts[1:] - starts[:-1]) == 1
            rows = torch.nonzero(single).flatten()
            rest = torch.nonzero(~single).flatten().tolist()
            sub, sub_tokens = (None, None) if not rest or not len(rows) else rows_metadata(
                md, rest, num_heads=self.num_heads, num_kv_heads=1, head_dim=self.head_size,
                dtype=dtype, isa=isa, kv_cache_dtype=self.kv_cache_dtype)
            split = DecodeSplit(rows, starts[rows].long(), sub, sub_tokens)
            md._shared_kv_split = split
        return split
