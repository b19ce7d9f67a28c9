"""Paged gather: the Triton kernel against the reference, and the reference against the
block table's meaning."""

from __future__ import annotations

import pytest
import torch

from kernels.paged_gather import naive
from kernels.paged_gather import triton as triton_kernel


def test_reference_reads_the_blocks_in_table_order():
    cache = torch.arange(6 * 4 * 1 * 2, dtype=torch.float32).view(6, 4, 1, 2)
    out = naive.paged_gather(cache, torch.tensor([5, 0, 3]), 10)
    assert out.shape == (10, 1, 2)
    assert torch.equal(out[:4], cache[5]) and torch.equal(out[4:8], cache[0])
    assert torch.equal(out[8:], cache[3, :2])


@pytest.mark.parametrize("length", [1, 16, 100, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_paged_gather_matches_reference(length, dtype):
    gen = torch.Generator().manual_seed(length)
    cache = torch.randn(40, 16, 3, 32, generator=gen).to(dtype)
    table = torch.randperm(40, generator=gen)[:8]
    assert torch.equal(triton_kernel.paged_gather(cache, table, length),
                       naive.paged_gather(cache, table, length))
