"""The index sets a sparse attention kernel computes over."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SparsePattern:
    """Which keys each query attends to, for one sequence.

    Queries are a chunk at absolute positions `q_offset .. q_offset + n_q - 1`; keys are the
    sequence's positions `0 .. q_offset + n_q - 1`. Blocks are aligned to absolute
    positions (as a paged KV cache's blocks are): key block b holds positions
    `b * block .. (b + 1) * block - 1`, and query block j holds the chunk's queries that
    fall in key block `q_offset // block + j` (the first may be partial). A query at
    position p attends to key t iff t <= p and (t // block is in `blocks[h, j]` or t is in
    `columns[h]`). `heads` is the query heads, or the KV heads when every query head of a
    group shares its KV head's pattern (`expand` turns one into the other).
    """

    block: int
    q_offset: int
    blocks: torch.Tensor  # (heads, q_blocks, max_blocks) int64 key-block ids, ascending, -1 pads
    columns: torch.Tensor  # (heads, max_columns) int64 key positions, ascending, -1 pads

    def __post_init__(self) -> None:
        if self.blocks.dim() != 3 or self.columns.dim() != 2:
            raise ValueError(f"blocks must be (heads, q_blocks, n), columns (heads, n); got "
                             f"{tuple(self.blocks.shape)} and {tuple(self.columns.shape)}")
        if self.blocks.shape[0] != self.columns.shape[0]:
            raise ValueError("blocks and columns must have the same number of heads")

    @property
    def heads(self) -> int:
        return self.blocks.shape[0]

    def expand(self, heads: int) -> SparsePattern:
        """The pattern per query head, from one per KV head (each shared by its group)."""
        group = heads // self.heads
        return SparsePattern(self.block, self.q_offset, self.blocks.repeat_interleave(group, 0),
                             self.columns.repeat_interleave(group, 0))

    def selected(self, n_keys: int) -> torch.Tensor:
        """(heads, q_blocks, key_blocks) bool: key block b is attended in full by query
        block j."""
        heads, q_blocks, _ = self.blocks.shape
        table = torch.zeros(heads, q_blocks, -(-n_keys // self.block) + 1, dtype=torch.bool)
        index = torch.where(self.blocks < 0, table.shape[-1] - 1, self.blocks)
        table.scatter_(2, index, True)
        return table[..., :-1]

    def block_pairs(self, n_q: int) -> int:
        """The query-key pairs the selected blocks hold for the chunk's queries, causality
        applied, summed over heads (columns not counted): what a block kernel computes.
        Each query block's own block is among its selected ones, and the others precede it."""
        first = self.q_offset // self.block
        starts = (first + torch.arange(self.blocks.shape[1])) * self.block
        q_first = starts.clamp(min=self.q_offset)
        q_last = (starts + self.block).clamp(max=self.q_offset + n_q) - 1
        lengths = q_last - q_first + 1
        keys = ((self.blocks >= 0).sum(2) - 1) * self.block + q_last % self.block + 1
        return int((lengths * (keys - lengths) + lengths * (lengths + 1) // 2).sum())

    def mask(self, n_q: int) -> torch.Tensor:
        """(heads, n_q, n_keys) bool: the pairs computed, causality included."""
        n_keys = self.q_offset + n_q
        q_block = (self.q_offset + torch.arange(n_q)) // self.block - self.q_offset // self.block
        k_block = torch.arange(n_keys) // self.block
        mask = self.selected(n_keys)[:, q_block][:, :, k_block]
        columns = torch.zeros(self.heads, n_keys + 1, dtype=torch.bool)
        columns.scatter_(1, torch.where(self.columns < 0, n_keys, self.columns), True)
        mask |= columns[:, None, :n_keys]
        causal = torch.arange(n_keys)[None, :] <= (self.q_offset + torch.arange(n_q))[:, None]
        return mask & causal

    def density(self, n_q: int) -> float:
        """Computed pairs over causal pairs."""
        causal = n_q * self.q_offset + n_q * (n_q + 1) // 2
        return float(self.mask(n_q).sum()) / (self.heads * causal)
