"""Triton kernel: one program per (query block, query head) walks its attended key blocks,
then its vertical columns in tiles, with an online softmax (FlashAttention-style).
Runs on CUDA, and on CPU under TRITON_INTERPRET=1 (tests)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.sparse_attention.pattern import SparsePattern


@triton.jit
def _online_update(s, v, m, l_sum, acc):
    m_new = tl.maximum(m, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet
    p = tl.exp(s - m_safe[:, None])
    alpha = tl.exp(m - m_safe)
    return m_new, l_sum * alpha + tl.sum(p, 1), acc * alpha[:, None] + tl.dot(p, v)


@triton.jit
def _sparse_attention_kernel(
    Q, K, V, O, BLOCKS, COUNTS, COLS, NCOLS, SELECTED,
    stride_qn, stride_qh, stride_kn, stride_kh, stride_on, stride_oh,
    stride_bh, stride_bj, stride_ch, stride_sh, stride_sj,
    n_q, n_q_blocks, n_keys, q_offset, scale, group,
    BLOCK: tl.constexpr, DIM: tl.constexpr, COL_TILE: tl.constexpr,
):
    j = tl.program_id(0)
    h = tl.program_id(1)
    kv = h // group
    positions = ((q_offset // BLOCK) + j) * BLOCK + tl.arange(0, BLOCK)  # aligned block
    rows = positions - q_offset  # in the chunk; outside [0, n_q) for a partial block
    live = (rows >= 0) & (rows < n_q)
    d = tl.arange(0, DIM)
    q = tl.load(Q + rows[:, None] * stride_qn + h * stride_qh + d[None, :],
                mask=live[:, None], other=0.0).to(tl.float32) * scale
    m = tl.full((BLOCK,), float("-inf"), tl.float32)
    l_sum = tl.zeros((BLOCK,), tl.float32)
    acc = tl.zeros((BLOCK, DIM), tl.float32)

    count = tl.load(COUNTS + h * n_q_blocks + j)
    for i in range(0, count):
        b = tl.load(BLOCKS + h * stride_bh + j * stride_bj + i)
        keys = b * BLOCK + tl.arange(0, BLOCK)
        ok = keys < n_keys
        kt = tl.load(K + keys[None, :] * stride_kn + kv * stride_kh + d[:, None],
                     mask=ok[None, :], other=0.0).to(tl.float32)  # (DIM, BLOCK)
        vb = tl.load(V + keys[:, None] * stride_kn + kv * stride_kh + d[None, :],
                     mask=ok[:, None], other=0.0).to(tl.float32)
        s = tl.dot(q, kt)
        s = tl.where(ok[None, :] & (keys[None, :] <= positions[:, None]), s, float("-inf"))
        m, l_sum, acc = _online_update(s, vb, m, l_sum, acc)

    n_cols = tl.load(NCOLS + h)
    for c0 in range(0, n_cols, COL_TILE):
        index = c0 + tl.arange(0, COL_TILE)
        ok = index < n_cols
        cols = tl.load(COLS + h * stride_ch + index, mask=ok, other=0)
        inside = tl.load(SELECTED + h * stride_sh + j * stride_sj + cols // BLOCK,
                         mask=ok, other=1)
        ok = ok & (inside == 0)  # already read with its block
        kt = tl.load(K + cols[None, :] * stride_kn + kv * stride_kh + d[:, None],
                     mask=ok[None, :], other=0.0).to(tl.float32)
        vc = tl.load(V + cols[:, None] * stride_kn + kv * stride_kh + d[None, :],
                     mask=ok[:, None], other=0.0).to(tl.float32)
        s = tl.dot(q, kt)
        s = tl.where(ok[None, :] & (cols[None, :] <= positions[:, None]), s, float("-inf"))
        m, l_sum, acc = _online_update(s, vc, m, l_sum, acc)

    out = acc / tl.where(l_sum == 0.0, 1.0, l_sum)[:, None]
    tl.store(O + rows[:, None] * stride_on + h * stride_oh + d[None, :],
             out.to(O.dtype.element_ty), mask=live[:, None])


def _pads_last(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid ids first (ascending), -1 pads after; and the count of valid ids per row."""
    big = torch.iinfo(torch.int32).max
    packed = torch.where(index < 0, big, index).sort(dim=-1).values
    return torch.where(packed == big, -1, packed).int().contiguous(), (index >= 0).sum(-1).int()


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     pattern: SparsePattern, scale: float,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """As `naive.sparse_attention`: q (n_q, heads, dim); k, v (n_keys, kv_heads, dim) with
    unit stride over dim; block and dim powers of two >= 16."""
    n_q, heads, dim = q.shape
    n_keys, kv_heads, _ = k.shape
    if pattern.heads != heads:
        pattern = pattern.expand(heads)
    if v.stride() != k.stride():
        raise ValueError("k and v must have the same strides")
    device = q.device
    blocks, counts = _pads_last(pattern.blocks)
    columns, n_columns = _pads_last(pattern.columns)
    if columns.shape[1] == 0:
        columns = torch.full((heads, 1), -1, dtype=torch.int32)
    selected = pattern.selected(n_keys).to(torch.int8).contiguous()
    blocks, counts, columns, n_columns, selected = (
        t.to(device) for t in (blocks, counts.contiguous(), columns, n_columns, selected))
    out = torch.empty_like(q) if out is None else out
    grid = (blocks.shape[1], heads)
    _sparse_attention_kernel[grid](
        q, k, v, out, blocks, counts, columns, n_columns, selected,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), out.stride(0), out.stride(1),
        blocks.stride(0), blocks.stride(1), columns.stride(0), selected.stride(0),
        selected.stride(1), n_q, blocks.shape[1], n_keys, pattern.q_offset, scale,
        heads // kv_heads,
        BLOCK=pattern.block, DIM=dim, COL_TILE=64,
    )
    return out
