"""Reference decode attention over a paged KV cache with one KV head, head by head.

q (B, H, D): one new token per request; k_cache, v_cache (num_blocks, block_size, 1, D);
block_tables (B, max_blocks) physical block ids; seq_lens (B,) tokens in the cache (the
new one included). out[b, h] = softmax(scale * q[b, h] K_b^T) V_b over the request's
seq_lens[b] positions. Float32 inside, q's dtype out.
"""

from __future__ import annotations

import torch

from kernels.paged_gather.naive import paged_gather


def decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
           block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    out = torch.empty_like(q)
    for b in range(q.shape[0]):
        n = int(seq_lens[b])
        keys = paged_gather(k_cache, block_tables[b], n)[:, 0].float()  # (n, D)
        values = paged_gather(v_cache, block_tables[b], n)[:, 0].float()
        for h in range(q.shape[1]):
            weights = torch.softmax(scale * (keys @ q[b, h].float()), dim=0)
            out[b, h] = (weights @ values).to(q.dtype)
    return out
