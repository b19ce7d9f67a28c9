"""Sparse prefill on vLLM's CPU attention kernel.

The pattern is chosen per KV head at the granularity of the KV cache's blocks, so no key
or value is copied: each query block of a sparse chunk becomes one pseudo-request of the
platform kernel whose block table lists only its selected physical blocks (ascending, the
block holding its own queries last, partial up to its last query: the kernel's causal
rule then gives each query exactly its selected keys). One kernel call per KV head, with
that head's slice of the cache. Gathering the selected keys into PyTorch matmuls instead
was slower than dense attention (BENCHMARKS.md, issue 6).

Requests that are not sparse this step (decode, short prompts, `dense`, KV-policy rows)
run through the same kernel in one call, with scheduler metadata built for them alone.
"""

from __future__ import annotations

import torch
from vllm import _custom_ops as ops
from vllm.v1.attention.backend import AttentionType

from attention_backends.mfa.cpu import SharedKVDecodeImpl
from attention_backends.policy_aware.cpu import (
    PolicyAwareCPUBackend, PolicyAwareCPUBuilder, rows_metadata,
)
from attention_backends.sparse.plan import (
    SparseAttendMixin, SparseBatch, SparseRow, count_row, plan_rows, row_pattern,
)
from kernels.sparse_attention import SparsePattern


class SparseCPUBuilder(PolicyAwareCPUBuilder):
    def build(self, common_prefix_len, common_attn_metadata, fast_build=False):
        metadata = super().build(common_prefix_len, common_attn_metadata, fast_build)
        metadata.sparse = self._plan(metadata)
        return metadata

    def _plan(self, md) -> SparseBatch | None:
        if not md.causal or self.window_size != -1:
            return None
        planned = plan_rows(md.query_start_loc.tolist(), md.seq_lens.tolist(), md.block_table,
                            self.block_size)
        if planned is None:
            return None
        rows, dense = planned
        return SparseBatch(rows, *self._dense_part(md, dense))

    def _dense_part(self, md, dense: list[int]):
        if not dense:
            return None, None
        return rows_metadata(md, dense, num_heads=self.num_heads,
                             num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
                             dtype=self.dtype, isa=self.isa, kv_cache_dtype=self.kv_cache_dtype)


class SparseCPUImpl(SparseAttendMixin, SharedKVDecodeImpl):
    def sparse_covers(self, output_scale) -> bool:
        return (self.attn_type == AttentionType.DECODER and self.alibi_slopes is None
                and not self.logits_soft_cap and self.sinks is None and not self.is_fp8_kv_cache)

    def _keys(self, layer, key, kv_cache, row: SparseRow) -> torch.Tensor:
        """(n_keys, kv_heads, dim): the cached prefix read back, then the chunk's keys."""
        chunk = key[row.start: row.end]
        if row.q_offset == 0:
            return chunk
        block = kv_cache.shape[2]
        prefix, _ = self.read_blocks(layer, kv_cache, row.table[: -(-row.q_offset // block)],
                                     row.q_offset)
        return torch.cat([prefix.transpose(0, 1).to(chunk.dtype), chunk])

    def attend_sparse(self, layer, query, key, kv_cache, row: SparseRow, output) -> None:
        q = query[row.start: row.end]
        pattern = row_pattern(row, layer, q, lambda: self._keys(layer, key, kv_cache, row),
                              self.scale, self.num_kv_heads)
        paged_sparse_attention(
            q, kv_cache, row.table, pattern, self.scale, layer.isa, output[row.start: row.end],
            kv_cache_dtype=self.kv_cache_dtype, k_scale=layer._k_scale_float,
            v_scale=layer._v_scale_float)
        count_row(row, pattern, self.num_heads)


def paged_sparse_attention(q: torch.Tensor, kv_cache: torch.Tensor, table: torch.Tensor,
                           pattern: SparsePattern, scale: float, isa: str, out: torch.Tensor,
                           kv_cache_dtype: str = "auto", k_scale: float = 1.0,
                           v_scale: float = 1.0) -> int:
    """Sparse causal attention of one request's chunk through vLLM's CPU kernel.

    q (n_q, heads, dim), the chunk at positions pattern.q_offset..; kv_cache vLLM's CPU
    layout (blocks, kv_heads, block_size, 2 * dim) already holding the chunk's keys and
    values; table the request's physical block ids; pattern one per KV head, at the cache's
    block size. Writes out (n_q, heads, dim); returns the query-key pairs computed."""
    n_q, heads, dim = q.shape
    blocks, kv_heads, block_size = kv_cache.shape[:3]
    key_cache, value_cache = kv_cache.view(blocks, kv_heads, 2 * block_size, -1).chunk(2, dim=2)
    group = heads // kv_heads
    first = pattern.q_offset // block_size
    positions = torch.arange(first, first + pattern.blocks.shape[1]) * block_size
    q_first = positions.clamp(min=pattern.q_offset)
    q_last = (positions + block_size).clamp(max=pattern.q_offset + n_q) - 1
    lengths = q_last - q_first + 1
    query_start_loc = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).int()
    for h in range(kv_heads):
        chosen = pattern.blocks[h]  # (q_blocks, k) ascending, -1 pads last
        counts = (chosen >= 0).sum(1)
        seq_lens = ((counts - 1) * block_size + q_last % block_size + 1).int()
        heads_of = slice(h * group, (h + 1) * group)
        part = torch.empty(n_q, group, dim, dtype=out.dtype)
        scheduler = ops.cpu_attn_get_scheduler_metadata(
            num_reqs=len(seq_lens), num_heads=group, num_kv_heads=1, head_dim=dim,
            seq_lens=seq_lens, dtype=q.dtype, query_start_loc=query_start_loc, causal=True,
            sliding_window_size=-1, isa=isa, enable_kv_split=False, kv_cache_dtype=kv_cache_dtype)
        ops.cpu_attention_with_kv_cache(
            query=q[:, heads_of].contiguous(), key_cache=key_cache[:, h: h + 1],
            value_cache=value_cache[:, h: h + 1], output=part, query_start_loc=query_start_loc,
            seq_lens=seq_lens, scale=scale, causal=True, alibi_slopes=None, sliding_window=-1,
            block_table=table[chosen.clamp(min=0)].int(), softcap=0,
            scheduler_metadata=scheduler, s_aux=None, k_scale=k_scale, v_scale=v_scale,
            kv_cache_dtype=kv_cache_dtype)
        out[:, heads_of] = part
    return pattern.block_pairs(n_q) * group


class SparseCPUBackend(PolicyAwareCPUBackend):
    @staticmethod
    def get_impl_cls() -> type[SparseCPUImpl]:
        return SparseCPUImpl

    @staticmethod
    def get_builder_cls() -> type[SparseCPUBuilder]:
        return SparseCPUBuilder
