"""MFA decode attention on CPU: the keys and values of the one shared KV head are read
once per request and every query head attends in one (H, D) x (D, n) product, instead of
one pass over K and V per head (or per group of heads, as a GQA kernel walks them).

Requests are batched: their blocks are gathered into one padded tensor (a group of
requests at a time, bounded in size), scores past a request's length are masked.
"""

from __future__ import annotations

import torch

# float32 elements of gathered keys (or values) per group of requests: ~128 MiB
GROUP_ELEMENTS = 1 << 25


def decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
           block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
           keys_transposed: bool = False) -> torch.Tensor:
    """As `naive.decode`. With `keys_transposed`, `k_cache` holds each block's keys
    dimension-major, (num_blocks, 1, D, block_size), as vLLM's CPU cache stores them."""
    batch, heads, dim = q.shape
    block = v_cache.shape[1]
    out = torch.empty_like(q)
    lengths = seq_lens.tolist()
    order = sorted(range(batch), key=lambda b: -lengths[b])  # similar lengths pad little
    start = 0
    while start < batch:
        longest = -(-lengths[order[start]] // block) * block
        count = max(1, min(batch - start, GROUP_ELEMENTS // (longest * dim)))
        rows = torch.tensor(order[start:start + count])
        out[rows] = _attend(q[rows], k_cache, v_cache, block_tables[rows, : longest // block],
                            seq_lens[rows], scale, keys_transposed).to(q.dtype)
        start += count
    return out


def _attend(q, k_cache, v_cache, tables, seq_lens, scale, keys_transposed) -> torch.Tensor:
    rows, heads, dim = q.shape
    tables = tables.long()
    q = q.float() * scale
    if keys_transposed:  # (rows, blocks, D, block): scores per block, then in order
        keys = k_cache[tables][:, :, 0].float()
        scores = torch.matmul(q[:, None], keys)  # (rows, blocks, H, block)
        scores = scores.transpose(1, 2).flatten(2)
    else:
        keys = k_cache[tables][:, :, :, 0].flatten(1, 2).float()  # (rows, n, D)
        scores = torch.bmm(q, keys.transpose(1, 2))
    positions = torch.arange(scores.shape[-1])
    scores.masked_fill_((positions[None] >= seq_lens[:, None])[:, None], float("-inf"))
    values = v_cache[tables][:, :, :, 0].flatten(1, 2).float()  # (rows, n, D)
    return torch.bmm(torch.softmax(scores, dim=-1), values)
