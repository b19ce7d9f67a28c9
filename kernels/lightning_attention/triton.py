"""Triton lightning attention: the same contract as `cpu.prefill` / `cpu.decode`.

prefill: one program per (sequence, head) walks the sequence's new tokens BLOCK at a time,
holding the (D, D) float32 state in registers: the masked intra-block product, the
inter-block term from the state, then the state update; it starts from the slot's state
(or zero) and stores the final one back. decode: one program per (request, head) loads
its state, adds k^T v after the decay, stores it and writes q S. D must be a power of two.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _prefill_kernel(Q, K, V, O, SLOPES, STARTS, STATES, SLOTS, FRESH,
                    stride_t, stride_h, stride_os, stride_oh, stride_ss, stride_sh,
                    BLOCK: tl.constexpr, D: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    lo = tl.load(STARTS + b)
    hi = tl.load(STARTS + b + 1)
    slot = tl.load(SLOTS + b).to(tl.int64)
    fresh = tl.load(FRESH + b)
    rate = tl.load(SLOPES + h)
    d = tl.arange(0, D)
    i = tl.arange(0, BLOCK)
    sp = STATES + slot * stride_ss + h * stride_sh + d[:, None] * D + d[None, :]
    state = tl.load(sp) * (1 - fresh).to(tl.float32)
    gap = (i[:, None] - i[None, :]).to(tl.float32)
    for start in range(lo, hi, BLOCK):
        n = tl.minimum(hi - start, BLOCK)
        ok = i < n
        rows = (start + i)[:, None] * stride_t + h * stride_h + d[None, :]
        q = tl.load(Q + rows, mask=ok[:, None], other=0.0).to(tl.float32)
        k = tl.load(K + rows, mask=ok[:, None], other=0.0).to(tl.float32)
        v = tl.load(V + rows, mask=ok[:, None], other=0.0).to(tl.float32)
        mask = tl.where(gap >= 0, tl.exp(-rate * tl.maximum(gap, 0.0)), 0.0)
        scores = tl.dot(q, tl.trans(k)) * mask
        fi = i.to(tl.float32)
        out = tl.dot(scores, v) + tl.dot(q * tl.exp(-rate * (fi + 1))[:, None], state)
        tl.store(O + (start + i)[:, None] * stride_os + h * stride_oh + d[None, :],
                 out.to(O.dtype.element_ty), mask=ok[:, None])
        tail = tl.where(ok, tl.exp(-rate * (n - 1 - fi)), 0.0)
        state = tl.exp(-rate * n) * state + tl.dot(tl.trans(k * tail[:, None]), v)
    tl.store(sp, state)


@triton.jit
def _decode_kernel(Q, K, V, O, SLOPES, STATES, SLOTS,
                   stride_b, stride_h, stride_ob, stride_oh, stride_ss, stride_sh,
                   D: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    slot = tl.load(SLOTS + b).to(tl.int64)
    rate = tl.load(SLOPES + h)
    d = tl.arange(0, D)
    row = b * stride_b + h * stride_h + d
    q = tl.load(Q + row).to(tl.float32)
    k = tl.load(K + row).to(tl.float32)
    v = tl.load(V + row).to(tl.float32)
    sp = STATES + slot * stride_ss + h * stride_sh + d[:, None] * D + d[None, :]
    state = tl.exp(-rate) * tl.load(sp) + k[:, None] * v[None, :]
    tl.store(sp, state)
    out = tl.sum(q[:, None] * state, axis=0)
    tl.store(O + b * stride_ob + h * stride_oh + d, out.to(O.dtype.element_ty))


def prefill(q, k, v, slopes, query_start_loc, state_cache, state_indices, fresh,
            block: int = 64):
    """As `cpu.prefill` (q, k, v contiguous over D; state_cache contiguous)."""
    tokens, heads, dim = q.shape
    out = torch.empty_like(q)
    batch = query_start_loc.numel() - 1
    _prefill_kernel[(batch, heads)](
        q, k, v, out, slopes.float().contiguous(), query_start_loc.to(torch.int32),
        state_cache, state_indices.to(torch.int32), fresh.to(torch.int32),
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        state_cache.stride(0), state_cache.stride(1), BLOCK=block, D=dim)
    return out


def decode(q, k, v, slopes, state_cache, state_indices):
    """As `cpu.decode`."""
    batch, heads, dim = q.shape
    out = torch.empty_like(q)
    _decode_kernel[(batch, heads)](
        q, k, v, out, slopes.float().contiguous(), state_cache,
        state_indices.to(torch.int32), q.stride(0), q.stride(1), out.stride(0),
        out.stride(1), state_cache.stride(0), state_cache.stride(1), D=dim)
    return out
