"""Reference: sparse attention as dense attention with the pattern's mask, in fp32."""

from __future__ import annotations

import torch

from kernels.sparse_attention.pattern import SparsePattern


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     pattern: SparsePattern, scale: float) -> torch.Tensor:
    """q (n_q, heads, dim); k, v (n_keys, kv_heads, dim), n_keys = q_offset + n_q; heads a
    multiple of kv_heads (grouped-query attention). Returns (n_q, heads, dim) in q's dtype.
    Softmax runs over each query's attended keys only."""
    n_q, heads, _ = q.shape
    group = heads // k.shape[1]
    if pattern.heads != heads:
        pattern = pattern.expand(heads)
    qh = q.transpose(0, 1).float()
    kh = k.transpose(0, 1).float().repeat_interleave(group, 0)
    vh = v.transpose(0, 1).float().repeat_interleave(group, 0)
    scores = (qh @ kh.transpose(1, 2)) * scale
    scores = scores.masked_fill(~pattern.mask(n_q), float("-inf"))
    return (scores.softmax(-1) @ vh).transpose(0, 1).to(q.dtype)


def dense_pattern(heads: int, n_q: int, q_offset: int, block: int) -> SparsePattern:
    """Every key block for every query block: the pattern of plain causal attention."""
    key_blocks = -(-(q_offset + n_q) // block)
    q_blocks = key_blocks - q_offset // block
    blocks = torch.arange(key_blocks).expand(heads, q_blocks, -1).clone()
    return SparsePattern(block, q_offset, blocks, torch.full((heads, 0), -1, dtype=torch.long))
