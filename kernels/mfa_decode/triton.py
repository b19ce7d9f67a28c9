"""Triton MFA decode attention: one program per (request, group of HEADS query heads)
walks the request's KV blocks once, loading each block of the shared K and V a single
time for the whole group, with an online softmax (running max and sum per head)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _mfa_decode_kernel(Q, KC, VC, TABLES, LENS, O, scale,
                       stride_qb, stride_qh, stride_kb, stride_kt, stride_tb,
                       stride_ob, stride_oh, num_heads,
                       HEADS: tl.constexpr, BLOCK: tl.constexpr, D: tl.constexpr):
    b = tl.program_id(0)
    g = tl.program_id(1)
    heads = g * HEADS + tl.arange(0, HEADS)
    live = heads < num_heads
    d = tl.arange(0, D)
    q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + d[None, :],
                mask=live[:, None], other=0.0).to(tl.float32)
    n = tl.load(LENS + b)
    m = tl.full((HEADS,), float("-inf"), tl.float32)
    total = tl.zeros((HEADS,), tl.float32)
    acc = tl.zeros((HEADS, D), tl.float32)
    t = tl.arange(0, BLOCK)
    for i in range(0, tl.cdiv(n, BLOCK)):
        physical = tl.load(TABLES + b * stride_tb + i).to(tl.int64)
        ok = i * BLOCK + t < n
        offs = physical * stride_kb + t[:, None] * stride_kt + d[None, :]
        k = tl.load(KC + offs, mask=ok[:, None], other=0.0).to(tl.float32)  # once per group
        v = tl.load(VC + offs, mask=ok[:, None], other=0.0).to(tl.float32)
        s = tl.dot(q, tl.trans(k)) * scale  # (HEADS, BLOCK)
        s = tl.where(ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m - m_new)
        total = total * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p, v)
        m = m_new
    out = acc / total[:, None]
    tl.store(O + b * stride_ob + heads[:, None] * stride_oh + d[None, :],
             out.to(O.dtype.element_ty), mask=live[:, None])


def decode(q, k_cache, v_cache, block_tables, seq_lens, scale, heads_per_program=16):
    """As `naive.decode`; block_size and D powers of two (>= 16), the caches contiguous."""
    batch, num_heads, dim = q.shape
    out = torch.empty_like(q)
    group = min(heads_per_program, triton.next_power_of_2(num_heads))
    tables = block_tables.to(torch.int32).contiguous()
    _mfa_decode_kernel[(batch, triton.cdiv(num_heads, group))](
        q, k_cache, v_cache, tables, seq_lens.to(torch.int32), out, scale,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), tables.stride(0),
        out.stride(0), out.stride(1), num_heads,
        HEADS=group, BLOCK=k_cache.shape[1], D=dim)
    return out
