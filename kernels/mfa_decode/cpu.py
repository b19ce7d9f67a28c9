"""MFA decode attention on CPU: per request, the shared head's keys and values are
gathered once and every query head attends in one (H, D) x (D, n) product, instead of
one pass over K and V per head."""

from __future__ import annotations

import torch


def decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
           block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """As `naive.decode`."""
    out = torch.empty_like(q)
    block = k_cache.shape[1]
    for b, n in enumerate(seq_lens.tolist()):
        table = block_tables[b, :-(-n // block)].long()
        keys = k_cache[table].flatten(0, 1)[:n, 0]  # (n, D): read once
        values = v_cache[table].flatten(0, 1)[:n, 0]
        scores = (q[b].float() @ keys.float().T) * scale  # (H, n): all heads at once
        out[b] = (torch.softmax(scores, dim=-1) @ values.float()).to(q.dtype)
    return out
