"""Sparse attention kernels against the reference (kernels/sparse_attention/naive.py), and
the reference against plain causal attention."""

from __future__ import annotations

import pytest
import torch

from attention_backends.sparse.config import SparseConfig
from attention_backends.sparse.patterns import make_estimator
from kernels.sparse_attention import naive
from kernels.sparse_attention import triton as triton_kernel

HEADS, KV_HEADS, DIM = 6, 2, 32


def assert_close(actual, expected, atol=2e-5):
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=0)


def inputs(n_keys: int, q_offset: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n_keys - q_offset, HEADS, DIM, generator=gen)
    k = torch.randn(n_keys, KV_HEADS, DIM, generator=gen)
    v = torch.randn(n_keys, KV_HEADS, DIM, generator=gen)
    return q, k, v


def test_reference_with_every_block_is_causal_attention():
    q, k, v = inputs(200, 70)
    pattern = naive.dense_pattern(HEADS, q.shape[0], 70, 32)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1).repeat_interleave(3, 0),
        v.transpose(0, 1).repeat_interleave(3, 0), scale=0.2,
        attn_mask=torch.ones(130, 200, dtype=torch.bool).tril(70)).transpose(0, 1)
    assert_close(naive.sparse_attention(q, k, v, pattern, 0.2), expected)


@pytest.mark.parametrize("method", ["vertical_slash", "block_topk", "lsh"])
@pytest.mark.parametrize("n_keys,q_offset", [(256, 0), (300, 100), (290, 253)],
                         ids=["whole-prompt", "unaligned-chunk", "short-tail-chunk"])
@pytest.mark.parametrize("per_kv_head", [False, True], ids=["per-head", "per-kv-head"])
def test_triton_kernel_matches_reference(method, n_keys, q_offset, per_kv_head):
    q, k, v = inputs(n_keys, q_offset)
    columns = 0 if per_kv_head or method != "vertical_slash" else 24
    config = SparseConfig(method=method, density=0.3, block=32, sink=32, local=32,
                          last_q=16, columns=columns)
    pattern = make_estimator(config).estimate(q, k, q_offset, 0.2, per_kv_head=per_kv_head)
    assert pattern.density(q.shape[0]) < 0.9  # the kernel really skips keys
    expected = naive.sparse_attention(q, k, v, pattern, 0.2)
    assert_close(triton_kernel.sparse_attention(q, k, v, pattern, 0.2), expected)


def test_triton_kernel_with_every_block_is_causal_attention():
    q, k, v = inputs(300, 100, seed=3)
    pattern = naive.dense_pattern(HEADS, q.shape[0], 100, 32)
    dense = naive.sparse_attention(q, k, v, pattern, 0.2)
    assert_close(triton_kernel.sparse_attention(q, k, v, pattern, 0.2), dense)


def test_columns_inside_attended_blocks_count_once():
    q, k, v = inputs(128, 0, seed=4)
    pattern = naive.dense_pattern(HEADS, 128, 0, 32)
    pattern.columns = torch.arange(0, 128, 5).expand(HEADS, -1).clone()  # all inside blocks
    dense = naive.sparse_attention(q, k, v, naive.dense_pattern(HEADS, 128, 0, 32), 0.2)
    assert_close(naive.sparse_attention(q, k, v, pattern, 0.2), dense)
    assert_close(triton_kernel.sparse_attention(q, k, v, pattern, 0.2), dense)


def test_bf16_inputs_give_bf16_close_to_fp32():
    q, k, v = inputs(256, 64, seed=5)
    config = SparseConfig(density=0.5, block=32, sink=32, local=32, last_q=16)
    pattern = make_estimator(config).estimate(q, k, 64, 0.2)
    expected = naive.sparse_attention(q, k, v, pattern, 0.2)
    out = triton_kernel.sparse_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), pattern, 0.2)
    assert out.dtype == torch.bfloat16
    assert_close(out, expected, atol=3e-2)
