"""MFA decode attention (many query heads, one shared KV head): the CPU path and the
Triton kernel (under the interpreter) against the head-by-head reference, and the
reference against plain softmax attention on contiguous K and V."""

from __future__ import annotations

import pytest
import torch

from kernels.mfa_decode import cpu, naive
from kernels.mfa_decode import triton as triton_kernel


def paged(lengths, heads=12, dim=32, block=16, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    blocks_each = [-(-n // block) for n in lengths]
    num_blocks = sum(blocks_each) + 3
    k_cache = torch.randn(num_blocks, block, 1, dim, generator=gen).to(dtype)
    v_cache = torch.randn(num_blocks, block, 1, dim, generator=gen).to(dtype)
    order = torch.randperm(num_blocks, generator=gen)
    tables = torch.zeros(len(lengths), max(blocks_each), dtype=torch.int64)
    used = 0
    for b, count in enumerate(blocks_each):
        tables[b, :count] = order[used:used + count]
        used += count
    q = torch.randn(len(lengths), heads, dim, generator=gen).to(dtype)
    return q, k_cache, v_cache, tables, torch.tensor(lengths)


def test_reference_is_softmax_attention():
    q, kc, vc, tables, lens = paged([37])
    keys = kc[tables[0]].flatten(0, 1)[:37, 0]
    values = vc[tables[0]].flatten(0, 1)[:37, 0]
    want = torch.softmax(q[0] @ keys.T * 0.2, dim=-1) @ values
    torch.testing.assert_close(naive.decode(q, kc, vc, tables, lens, 0.2)[0], want)


@pytest.mark.parametrize("impl", ["cpu", "triton"])
@pytest.mark.parametrize("heads", [1, 12, 64])
def test_matches_reference(impl, heads):
    module = cpu if impl == "cpu" else triton_kernel
    q, kc, vc, tables, lens = paged([1, 16, 17, 100], heads=heads)
    want = naive.decode(q, kc, vc, tables, lens, 32 ** -0.5)
    got = module.decode(q, kc, vc, tables, lens, 32 ** -0.5)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_bf16_cache():
    q, kc, vc, tables, lens = paged([5, 70], dtype=torch.bfloat16)
    want = naive.decode(q, kc, vc, tables, lens, 0.1)
    for module in (cpu, triton_kernel):
        got = module.decode(q, kc, vc, tables, lens, 0.1)
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want.float(), atol=1e-2, rtol=1e-2)


def test_cpu_keys_stored_dimension_major():
    """vLLM's CPU cache stores each block's keys as (D, block_size)."""
    q, kc, vc, tables, lens = paged([1, 16, 17, 100], heads=8)
    want = naive.decode(q, kc, vc, tables, lens, 0.3)
    transposed = kc.permute(0, 2, 3, 1).contiguous()  # (blocks, 1, D, block)
    got = cpu.decode(q, transposed, vc, tables, lens, 0.3, keys_transposed=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_cpu_groups_requests_by_size(monkeypatch):
    """Requests split over several gathered groups (longest first) give the same result."""
    q, kc, vc, tables, lens = paged([100, 3, 64, 17, 40], heads=4)
    want = naive.decode(q, kc, vc, tables, lens, 0.3)
    monkeypatch.setattr(cpu, "GROUP_ELEMENTS", 2 * 64 * 32)  # 1 row of 100, then 2 of 64
    torch.testing.assert_close(cpu.decode(q, kc, vc, tables, lens, 0.3), want,
                               atol=1e-5, rtol=1e-4)
