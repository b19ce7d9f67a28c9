"""Reference paged gather."""

from __future__ import annotations

import torch


def paged_gather(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """cache (num_blocks, block_size, kv_heads, dim), block_table (n,) physical block ids ->
    (length, kv_heads, dim): positions 0..length-1 of the sequence."""
    return cache[block_table.long()].flatten(0, 1)[:length]
