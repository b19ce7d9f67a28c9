"""The CUDA sparse prefill path on CPU tensors: FlashAttention's cache layout, the impl's
sparse rows (gather, estimate, Triton kernel under the interpreter) against the reference,
and the metadata the dense rows get. No GPU engine runs these; FlashAttention itself does
not run here."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from vllm.v1.attention.backend import AttentionType
from vllm.v1.attention.backends.flash_attn import FlashAttentionMetadata

from attention_backends.policy_aware.cuda import PolicyAwareFlashAttnImpl, flash_views
from attention_backends.sparse.config import SparseConfig
from attention_backends.sparse.cuda import (
    PATTERN_BLOCK, SparseFlashAttnImpl, flash_rows_metadata,
)
from attention_backends.sparse.plan import SparseBatch, SparseRow, row_pattern
from kernels.sparse_attention import naive

HEADS, KV_HEADS, DIM, CACHE_BLOCK = 9, 3, 64, 16


def impl(cls):
    """An impl with the attributes FlashAttentionImpl.__init__ would set (it needs CUDA)."""
    self = object.__new__(cls)
    self.__dict__.update(
        num_heads=HEADS, num_kv_heads=KV_HEADS, head_size=DIM, scale=0.125,
        attn_type=AttentionType.DECODER, alibi_slopes=None, logits_soft_cap=0, sinks=None,
        sliding_window=(-1, -1), kv_cache_dtype="auto", dcp_world_size=1)
    return self


def paged(k, v, seed=0):
    """A FlashAttention-layout cache holding one sequence's keys and values in scattered
    blocks, and its block table."""
    n = k.shape[0]
    blocks = -(-n // CACHE_BLOCK)
    table = torch.randperm(blocks + 5, generator=torch.Generator().manual_seed(seed))[:blocks]
    cache = torch.zeros(blocks + 5, KV_HEADS, CACHE_BLOCK, 2 * DIM, dtype=k.dtype)
    key_view, value_view = flash_views(cache, DIM)
    slots = table.repeat_interleave(CACHE_BLOCK)[:n]
    offsets = torch.arange(n) % CACHE_BLOCK
    key_view[slots, offsets] = k
    value_view[slots, offsets] = v
    return cache, table


def test_flash_layout_read_write_round_trip():
    """write_blocks puts entries where FlashAttention's views read them, read_blocks reads
    them back in table order."""
    gen = torch.Generator().manual_seed(1)
    keys = torch.randn(KV_HEADS, 2 * CACHE_BLOCK, DIM, generator=gen)
    values = torch.randn(KV_HEADS, 2 * CACHE_BLOCK, DIM, generator=gen)
    cache = torch.zeros(6, KV_HEADS, CACHE_BLOCK, 2 * DIM)
    wrapper = impl(PolicyAwareFlashAttnImpl)
    wrapper.write_blocks(None, cache, torch.tensor([4, 1]), keys, values)
    assert torch.equal(cache[4, 2, 3, :DIM], keys[2, 3])  # block 4 holds tokens 0..15
    assert torch.equal(cache[1, 0, 5, DIM:], values[0, CACHE_BLOCK + 5])
    assert cache[[0, 2, 3, 5]].abs().sum() == 0
    got_k, got_v = wrapper.read_blocks(None, cache, torch.tensor([4, 1]), 20)
    assert torch.equal(got_k, keys[:, :20]) and torch.equal(got_v, values[:, :20])


@pytest.mark.parametrize("method,columns", [("vertical_slash", 0), ("vertical_slash", 24),
                                            ("block_topk", 0), ("lsh", 0)])
def test_sparse_rows_match_the_reference(method, columns):
    """A batch's sparse row through the impl (the other tokens untouched) equals the
    reference attention with the pattern estimated from the same keys."""
    n_keys, q_offset, lead = 1100, 500, 7  # a chunk after a cached prefix, mid-batch
    gen = torch.Generator().manual_seed(3)
    k = torch.randn(n_keys, KV_HEADS, DIM, generator=gen)
    v = torch.randn(n_keys, KV_HEADS, DIM, generator=gen)
    query = torch.randn(lead + n_keys - q_offset + 4, HEADS, DIM, generator=gen)
    cache, table = paged(k, v)
    config = SparseConfig(method=method, density=0.3, block=PATTERN_BLOCK, sink=64, local=128,
                          last_q=32, columns=columns)
    row = SparseRow(lead, lead + n_keys - q_offset, q_offset, table, config, ends_prompt=True)
    layer = SimpleNamespace(layer_name="model.layers.5.self_attn.attn")
    output = torch.zeros_like(query)
    impl(SparseFlashAttnImpl).attend(layer, query, None, None, cache,
                                     SimpleNamespace(sparse=SparseBatch([row], None, None)),
                                     output)
    q = query[row.start: row.end]
    pattern = row_pattern(row, layer, q, lambda: k, 0.125, KV_HEADS, per_kv_head=not columns)
    assert pattern.density(q.shape[0]) < 0.9  # the kernel really skips keys
    expected = naive.sparse_attention(q, k, v, pattern, 0.125)
    torch.testing.assert_close(output[row.start: row.end], expected, atol=2e-5, rtol=0)
    assert output[:lead].abs().sum() == 0 and output[row.end:].abs().sum() == 0


def test_dense_rows_get_metadata_of_their_own():
    """Rows 0 and 2 of three (5, 1 and 7 query tokens) as FlashAttention sees them alone."""
    query_start_loc = torch.tensor([0, 5, 6, 13], dtype=torch.int32)
    md = FlashAttentionMetadata(
        num_actual_tokens=13, max_query_len=7, query_start_loc=query_start_loc, max_seq_len=30,
        seq_lens=torch.tensor([20, 9, 30], dtype=torch.int32),
        block_table=torch.arange(12, dtype=torch.int32).view(3, 4),
        slot_mapping=torch.arange(100, 113), scheduler_metadata=torch.zeros(8),
        max_num_splits=4)
    sub, tokens = flash_rows_metadata(md, [0, 2], query_start_loc)
    assert tokens.tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12]
    assert sub.query_start_loc.tolist() == [0, 5, 12]
    assert sub.query_start_loc.dtype == torch.int32
    assert sub.seq_lens.tolist() == [20, 30] and sub.block_table.tolist() == [
        [0, 1, 2, 3], [8, 9, 10, 11]]
    assert sub.slot_mapping.tolist() == [100, 101, 102, 103, 104, *range(106, 113)]
    assert (sub.num_actual_tokens, sub.max_query_len) == (12, 7)
    assert sub.scheduler_metadata is None and sub.max_num_splits == 0  # FA plans them itself
    assert flash_rows_metadata(md, [], query_start_loc) == (None, None)
