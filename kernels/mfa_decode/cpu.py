"""MFA decode attention on CPU: per request, the shared head's keys and values are
gathered once and every query head attends in one (H, D) x (D, n) product, instead of
one pass over K and V per head."""

from __future__ import annotations

import torch

from kernels.paged_gather.naive import paged_gather


def decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
           block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """As `naive.decode`."""
    out = torch.empty_like(q)
    for b, n in enumerate(seq_lens.tolist()):
        keys = paged_gather(k_cache, block_tables[b], n)[:, 0]  # (n, D): read once
        values = paged_gather(v_cache, block_tables[b], n)[:, 0]
        scores = (q[b].float() @ keys.float().T) * scale  # (H, n): all heads at once
        out[b] = (torch.softmax(scores, dim=-1) @ values.float()).to(q.dtype)
    return out
