"""Quest (Tang et al., 2024): query-aware selection of KV blocks at each decode step.

Each full block is summarized by the per-channel minimum and maximum of its keys; for a
query q, sum_d max(q_d * max_d, q_d * min_d) bounds from above the logit any key of the
block can reach, so the blocks with the highest bounds are where attention can be large.
Each decode step attends to the best `budget` share of the request's blocks per KV head
(query heads sharing a KV head take their largest bound), always including the first
block (attention sinks) and the newest blocks (the recent window); the entries stay in
the cache, nothing is freed.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from cache_policies.base import KVPolicy


def block_summaries(keys: torch.Tensor, block_size: int) -> torch.Tensor:
    """keys (kv_heads, n * block, dim) -> (n, kv_heads, 2, dim): per block min and max."""
    heads, length, dim = keys.shape
    blocks = keys.float().view(heads, length // block_size, block_size, dim)
    return torch.stack([blocks.amin(2), blocks.amax(2)], dim=2).transpose(0, 1)


def upper_bounds(query: torch.Tensor, summaries: torch.Tensor) -> torch.Tensor:
    """query (heads, dim), summaries (n, kv_heads, 2, dim) -> (kv_heads, n): the largest
    logit (before scaling) a key of each block can give any query head of the group."""
    n, kv_heads, _, dim = summaries.shape
    q = query.float().view(kv_heads, -1, 1, 1, dim)  # (kv, group, 1, 1, dim)
    products = q * summaries.permute(1, 0, 2, 3).unsqueeze(1)  # (kv, group, n, 2, dim)
    return products.amax(dim=3).sum(-1).amax(dim=1)


class BlockRetriever(KVPolicy):
    """Base of decode-time block selection. `budget`: the share of the request's blocks
    (a ratio) or the number of entries (tokens, rounded up to blocks) each step attends."""

    retrieves: ClassVar[bool] = True
    default_budget = 0.25
    sink_blocks: ClassVar[int] = 1
    recent_blocks: ClassVar[int] = 1  # full blocks before the one being written
    window: ClassVar[int] = 1

    def limit(self, total_blocks: int, block_size: int) -> int:
        """Blocks attended per KV head, the one being written included."""
        budget = self.default_budget if self.config.budget is None else self.config.budget
        if isinstance(budget, float):
            return max(1, math.ceil(budget * total_blocks))
        return max(1, -(-budget // block_size))

    def scores(self, queries: torch.Tensor, summaries: torch.Tensor,
               scale: float) -> torch.Tensor:
        """queries (heads, W, dim), the newest last -> (kv_heads, n) block scores."""
        return upper_bounds(queries[:, -1], summaries)

    def cut(self, scores: torch.Tensor, scale: float, keep: int) -> torch.Tensor:
        """How many of the best blocks each KV head keeps: (kv_heads,), at most `keep`."""
        return torch.full((scores.shape[0],), keep, dtype=torch.long)

    def select(self, queries: torch.Tensor, summaries: torch.Tensor, scale: float,
               limit: int) -> torch.Tensor:
        """(kv_heads, n) mask of the full blocks attended besides the one being written:
        sinks and recent blocks always, then the best scores, `limit - 1` in all at most."""
        scores = self.scores(queries, summaries, scale)
        heads, n = scores.shape
        forced = torch.zeros(n, dtype=torch.bool)
        forced[: self.sink_blocks] = True
        forced[max(0, n - self.recent_blocks):] = True
        budget = max(0, limit - 1 - int(forced.sum()))
        ranked = scores.masked_fill(forced, float("-inf")).sort(dim=1, descending=True).indices
        counts = self.cut(scores.masked_fill(forced, float("-inf")), scale, budget)
        chosen = torch.arange(n).view(1, n) < counts.view(-1, 1)  # in rank order
        mask = torch.zeros(heads, n, dtype=torch.bool).scatter_(1, ranked, chosen)
        return mask | forced


class Quest(BlockRetriever):
    name = "quest"
