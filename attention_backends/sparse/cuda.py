"""Sparse prefill on CUDA hosts: the pattern estimated on the GPU, attention by the Triton
kernel (`kernels/sparse_attention/triton.py`) over the request's keys and values, read
out of FlashAttention's paged cache by the Triton paged gather.

The pattern's blocks are `PATTERN_BLOCK` tokens whatever the cache's block (16 on CUDA):
the kernel reads the gathered, contiguous keys, and 128 is the granularity the CPU path
was measured at (BENCHMARKS.md, issue 6). Requests that are not sparse this step run
through FlashAttention in one call, with metadata built for them alone.

Not run on a GPU engine by this project's CI (no GPU with vLLM is lent to it): the impl's
sparse path, the gather and the dense rows' metadata are tested on CPU tensors, the
kernels under TRITON_INTERPRET=1. The gather copies a sparse chunk's whole prefix per
layer; a kernel that reads the selected blocks through the block table is the next step.
"""

from __future__ import annotations

import dataclasses
import itertools

import torch
from vllm.v1.attention.backend import AttentionType

from attention_backends.policy_aware.cuda import (
    PolicyAwareFlashAttnBackend, PolicyAwareFlashAttnBuilder, PolicyAwareFlashAttnImpl,
    flash_views,
)
from attention_backends.sparse.plan import (
    SparseAttendMixin, SparseBatch, SparseRow, count_row, plan_rows, row_pattern,
)
from kernels.paged_gather.triton import paged_gather
from kernels.sparse_attention.triton import sparse_attention

PATTERN_BLOCK = 128


def flash_rows_metadata(md, rows: list[int], query_start_loc_cpu: torch.Tensor):
    """The FlashAttention metadata of some of a batch's requests (`rows`, ascending) as the
    kernel would see them alone, and their tokens' indices in the batch; (None, None) for
    no rows. `max_seq_len` stays the batch's (an upper bound, as FlashAttention allows)."""
    if not rows:
        return None, None
    starts = query_start_loc_cpu.tolist()
    lengths = [starts[r + 1] - starts[r] for r in rows]
    device = md.query_start_loc.device
    tokens = torch.cat([torch.arange(starts[r], starts[r + 1]) for r in rows]).to(device)
    index = torch.tensor(rows, device=device)
    query_start_loc = torch.tensor([0, *itertools.accumulate(lengths)],
                                   dtype=md.query_start_loc.dtype, device=device)
    sub = dataclasses.replace(
        md, num_actual_tokens=len(tokens), max_query_len=max(lengths),
        query_start_loc=query_start_loc, seq_lens=md.seq_lens[index],
        block_table=md.block_table[index], slot_mapping=md.slot_mapping[tokens],
        scheduler_metadata=None, max_num_splits=0)
    return sub, tokens


class SparseFlashAttnBuilder(PolicyAwareFlashAttnBuilder):
    def build(self, common_prefix_len, common_attn_metadata, fast_build=False):
        metadata = super().build(common_prefix_len, common_attn_metadata, fast_build)
        metadata.sparse = self._plan(metadata, common_attn_metadata)
        return metadata

    def _plan(self, md, common) -> SparseBatch | None:
        if (md.causal is not True or md.max_query_len < 2
                or md.mm_prefix_query_range_tensor is not None or md.rswa_prefix_lens is not None):
            return None
        seq_lens = common.seq_lens_cpu_upper_bound  # exact for prefill rows, the sparse ones
        if seq_lens is None:
            seq_lens = md.seq_lens.cpu()
        planned = plan_rows(common.query_start_loc_cpu.tolist(), seq_lens.tolist(),
                            md.block_table, PATTERN_BLOCK)
        if planned is None:
            return None
        rows, dense = planned
        return SparseBatch(rows, *flash_rows_metadata(md, dense, common.query_start_loc_cpu))


def _power_of_two(n: int) -> bool:
    return n >= 16 and not n & (n - 1)


class SparseFlashAttnImpl(SparseAttendMixin, PolicyAwareFlashAttnImpl):
    def sparse_covers(self, output_scale) -> bool:
        return (self.attn_type == AttentionType.DECODER and self.alibi_slopes is None
                and not self.logits_soft_cap and self.sinks is None
                and tuple(self.sliding_window) == (-1, -1)
                and not str(self.kv_cache_dtype).startswith("fp8")
                and getattr(self, "dcp_world_size", 1) == 1 and _power_of_two(self.head_size)
                and output_scale is None)

    def attend_sparse(self, layer, query, key, kv_cache, row: SparseRow, output) -> None:
        key_cache, value_cache = flash_views(kv_cache, self.head_size)
        q = query[row.start: row.end]
        n_keys = row.q_offset + q.shape[0]
        keys = paged_gather(key_cache, row.table, n_keys)  # the chunk's own are cached too
        values = paged_gather(value_cache, row.table, n_keys)
        pattern = row_pattern(row, layer, q, lambda: keys, self.scale, self.num_kv_heads,
                              per_kv_head=not row.config.columns)
        sparse_attention(q, keys, values, pattern, self.scale, out=output[row.start: row.end])
        count_row(row, pattern, self.num_heads)


class SparseFlashAttnBackend(PolicyAwareFlashAttnBackend):
    @staticmethod
    def get_impl_cls() -> type[SparseFlashAttnImpl]:
        return SparseFlashAttnImpl

    @staticmethod
    def get_builder_cls() -> type[SparseFlashAttnBuilder]:
        return SparseFlashAttnBuilder
