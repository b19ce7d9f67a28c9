"""Triton paged gather: one program per (logical block, KV head) copies its block_size x
head_dim tile."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _paged_gather_kernel(CACHE, TABLE, OUT, length,
                         stride_cb, stride_ct, stride_ch, stride_on, stride_oh,
                         BLOCK: tl.constexpr, DIM: tl.constexpr):
    i = tl.program_id(0)
    h = tl.program_id(1)
    physical = tl.load(TABLE + i).to(tl.int64)
    t = tl.arange(0, BLOCK)
    d = tl.arange(0, DIM)
    ok = (i * BLOCK + t) < length
    tile = tl.load(CACHE + physical * stride_cb + t[:, None] * stride_ct + h * stride_ch
                   + d[None, :], mask=ok[:, None])
    tl.store(OUT + (i * BLOCK + t)[:, None] * stride_on + h * stride_oh + d[None, :], tile,
             mask=ok[:, None])


def paged_gather(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """As `naive.paged_gather`; block_size and head_dim powers of two, unit stride over dim."""
    _, block, heads, dim = cache.shape
    out = torch.empty(length, heads, dim, dtype=cache.dtype, device=cache.device)
    blocks = -(-length // block)
    table = block_table[:blocks].to(device=cache.device, dtype=torch.int32).contiguous()
    _paged_gather_kernel[(blocks, heads)](
        cache, table, out, length, cache.stride(0), cache.stride(1), cache.stride(2),
        out.stride(0), out.stride(1), BLOCK=block, DIM=dim)
    return out
