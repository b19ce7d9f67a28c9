"""Quest (Tang et al., 2024): query-aware selection of KV blocks at each decode step.

Each page of 16 entries (Quest's page size; a vLLM block holds 8 on CPU) is summarized
by the per-channel minimum and maximum of its keys; for a query q,
sum_d max(q_d * max_d, q_d * min_d) bounds from above the logit any key of the page can
reach, so the pages with the highest bounds are where attention can be large. Each
decode step attends, per KV head (query heads sharing a KV head take their largest
bound), to the best pages within `budget` of the request's entries, always including the
first page (attention sinks) and the two newest pages (the recent window) besides the
block being written. Nothing is evicted: the offload tier (`cache_policies.offload`) is
what moves blocks out of vLLM's memory.

On 128-entry pages the bounds are too loose to tell pages apart (min and max over 128
keys span most of each channel's range): at a quarter of the blocks the needle's digits
were lost where 16-entry pages keep them (BENCHMARKS.md).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from cache_policies.base import KVPolicy


PAGE = 16


def page_summaries(keys: torch.Tensor, page: int = PAGE) -> torch.Tensor:
    """keys (kv_heads, n * page, dim) -> (n, kv_heads, 2, dim): per page min and max."""
    heads, length, dim = keys.shape
    pages = keys.float().view(heads, length // page, page, dim)
    return torch.stack([pages.amin(2), pages.amax(2)], dim=2).transpose(0, 1)


def upper_bounds(query: torch.Tensor, summaries: torch.Tensor) -> torch.Tensor:
    """query (heads, dim), summaries (n, kv_heads, 2, dim) -> (kv_heads, n): the largest
    logit (before scaling) a key of each page can give any query head of the group."""
    n, kv_heads, _, dim = summaries.shape
    q = query.float().view(kv_heads, -1, 1, 1, dim)  # (kv, group, 1, 1, dim)
    products = q * summaries.permute(1, 0, 2, 3).unsqueeze(1)  # (kv, group, n, 2, dim)
    return products.amax(dim=3).sum(-1).amax(dim=1)


class BlockRetriever(KVPolicy):
    """Base of decode-time page selection. `budget`: the share of the request's entries
    (a ratio) or the number of entries (tokens) each decode step attends to per KV head,
    counted in whole pages (rounded down), the block being written included."""

    retrieves: ClassVar[bool] = True
    default_budget = 0.25
    page: ClassVar[int] = PAGE
    sink_pages: ClassVar[int] = 1
    recent_pages: ClassVar[int] = 2  # pages before the block being written, always attended
    sink_blocks: ClassVar[int] = 1  # blocks kept in vLLM's memory by the offload tier: the
    recent_blocks: ClassVar[int] = 1  # sink's, and the full ones before the block written
    window: ClassVar[int] = 1

    def limit(self, total_pages: int) -> int:
        """Pages attended per KV head, those of the block being written included: the
        whole pages the budget holds, so a step never attends more than its budget (the
        sink, recent and written pages are attended even where they exceed it)."""
        budget = self.default_budget if self.config.budget is None else self.config.budget
        if isinstance(budget, float):
            # rounded first: 0.29 * 100 is 28.999999999999996 in floats, and 29 pages fit
            return max(1, math.floor(round(budget * total_pages, 9)))
        return max(1, budget // self.page)

    def summarize(self, keys: torch.Tensor) -> torch.Tensor:
        """keys (kv_heads, n * page, dim) -> what `scores` reads of each page, made once
        per full block: (n, ...), pages first."""
        return page_summaries(keys, self.page)

    def scores(self, queries: torch.Tensor, summaries: torch.Tensor,
               scale: float) -> torch.Tensor:
        """queries (heads, W, dim), the newest last -> (kv_heads, n) page scores."""
        return upper_bounds(queries[:, -1], summaries)

    def cut(self, scores: torch.Tensor, scale: float, keep: int) -> torch.Tensor:
        """How many of the best pages each KV head keeps: (kv_heads,), at most `keep`."""
        return torch.full((scores.shape[0],), keep, dtype=torch.long)

    def select(self, queries: torch.Tensor, summaries: torch.Tensor, scale: float,
               budget: int, recent: int) -> torch.Tensor:
        """(kv_heads, n) mask over the candidate pages (those of full blocks): the sink
        pages and the last `recent` pages always, then the best scores, `budget` at most."""
        scores = self.scores(queries, summaries, scale)
        heads, n = scores.shape
        forced = torch.zeros(n, dtype=torch.bool)
        forced[: self.sink_pages] = True
        forced[max(0, n - recent):] = True
        rest = scores.masked_fill(forced, float("-inf"))
        counts = self.cut(rest, scale, max(0, budget - int(forced.sum())))
        ranked = rest.sort(dim=1, descending=True).indices
        chosen = torch.arange(n).view(1, n) < counts.view(-1, 1)  # in rank order
        mask = torch.zeros(heads, n, dtype=torch.bool).scatter_(1, ranked, chosen)
        return mask | forced


class Quest(BlockRetriever):
    name = "quest"
