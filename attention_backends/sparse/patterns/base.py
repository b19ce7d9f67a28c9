"""What every pattern estimator shares: block budgets, causality, sink and local blocks.

A method implements `scores` (per block, higher = more worth attending, and optionally
vertical columns) and, where its scores are not attention mass, `shares` (the estimated
share of each block in a query block's attention); the base turns them into a
`SparsePattern` within the budget.
"""

from __future__ import annotations

import torch

from attention_backends.sparse.config import SparseConfig
from kernels.sparse_attention import SparsePattern


def query_blocks(q_offset: int, n_q: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last position of each query block (blocks aligned to absolute positions,
    the first one partial when the chunk starts mid-block): two (q_blocks,) tensors."""
    first_block = q_offset // block
    blocks = (q_offset + n_q - 1) // block - first_block + 1
    starts = (first_block + torch.arange(blocks)) * block
    return starts.clamp(min=q_offset), (starts + block).clamp(max=q_offset + n_q) - 1


def pool(x: torch.Tensor, block: int, offset: int = 0) -> torch.Tensor:
    """(heads, n, dim) -> (heads, blocks, dim): the mean over each aligned block of
    positions, x[:, 0] being at position `offset`."""
    heads, n, dim = x.shape
    lead = offset % block
    padded = torch.nn.functional.pad(x, (0, 0, lead, -(n + lead) % block))
    sums = padded.view(heads, -1, block, dim).sum(2)
    counts = torch.ones(n + lead, device=x.device)
    counts[:lead] = 0
    counts = torch.nn.functional.pad(counts, (0, -(n + lead) % block)).view(-1, block).sum(1)
    return sums / counts[None, :, None]


def expand_heads(k: torch.Tensor, heads: int) -> torch.Tensor:
    """(n, kv_heads, dim) -> (heads, n, dim), each KV head repeated for its query heads."""
    return k.transpose(0, 1).repeat_interleave(heads // k.shape[1], 0)


class PatternEstimator:
    def __init__(self, config: SparseConfig) -> None:
        self.config = config

    def scores(self, q: torch.Tensor, k: torch.Tensor, q_offset: int,
               scale: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Block scores (heads, q_blocks, key_blocks), higher = more worth attending, and
        optionally vertical columns (heads, n) key positions every later query attends.
        q (n_q, heads, dim), k (n_keys, kv_heads, dim)."""
        raise NotImplementedError

    def shares(self, scores: torch.Tensor, causal: torch.Tensor, scale: float) -> torch.Tensor:
        """(heads, q_blocks, key_blocks) scores -> the estimated share of each causal key
        block in the query block's attention (sums to 1 over the causal blocks). The default
        reads non-negative scores as attention mass."""
        mass = scores.clamp(min=0).masked_fill(~causal, 0)
        return mass / mass.sum(-1, keepdim=True).clamp(min=1e-30)

    def estimate(self, q: torch.Tensor, k: torch.Tensor, q_offset: int, scale: float,
                 per_kv_head: bool = False, dense_tail: int = 0) -> SparsePattern:
        """The pattern for a chunk of queries at positions q_offset.. over keys 0..n_keys-1;
        with `per_kv_head` one pattern per KV head, from its query heads' mean scores
        (kernels that read each KV block once for the whole group need that). The query
        blocks holding the chunk's last `dense_tail` queries attend to every causal block
        (the end of a prompt: the question, and the queries that produce the answer).
        `scores` runs on q's device; the selection, on block-level tensors, on the host."""
        block_scores, columns = self.scores(q, k, q_offset, scale)
        block_scores = block_scores.float().cpu()
        columns = None if columns is None else columns.cpu()
        if self.config.mass > 0:  # select on shares, which average over a KV head's group
            _, lasts = query_blocks(q_offset, q.shape[0], self.config.block)
            causal = causal_blocks(lasts // self.config.block, block_scores.shape[2])
            block_scores = self.shares(block_scores, causal, scale)
        if per_kv_head:
            kv_heads = k.shape[1]
            block_scores = block_scores.view(kv_heads, -1, *block_scores.shape[1:]).mean(1)
            if columns is not None and columns.shape[1]:
                raise ValueError("vertical columns are per query head; set columns=0 for "
                                 "a per-KV-head pattern")
            columns = None
        blocks = self.select_blocks(block_scores, q_offset, q.shape[0], k.shape[0], dense_tail)
        if columns is None:
            columns = torch.empty(blocks.shape[0], 0, dtype=torch.long)
        return SparsePattern(self.config.block, q_offset, blocks, columns.sort(dim=1).values)

    def select_blocks(self, scores: torch.Tensor, q_offset: int, n_q: int,
                      n_keys: int, dense_tail: int = 0) -> torch.Tensor:
        """(heads, q_blocks, k) ascending key-block ids, -1 pads: per query block the sink
        and local blocks, then the best-scored causal blocks up to ceil(density * causal);
        with `mass` > 0 (scores are then shares), per head as many more as it takes for the
        kept blocks to hold `mass` of the estimated attention."""
        cfg, block = self.config, self.config.block
        key_blocks = scores.shape[2]
        starts, lasts = query_blocks(q_offset, n_q, block)
        last_block = lasts // block
        b = torch.arange(key_blocks)
        causal = causal_blocks(last_block, key_blocks)
        forced = causal & ((b[None, :] < -(-cfg.sink // block))
                           | (b[None, :] >= ((starts - cfg.local).clamp(min=0) // block)[:, None]))
        budget = torch.maximum(forced.sum(1),
                               torch.ceil(cfg.density * (last_block + 1)).long())  # (q_blocks,)
        budget = torch.where(lasts >= q_offset + n_q - dense_tail, last_block + 1, budget)
        budget = budget.expand(scores.shape[0], -1)  # (heads, q_blocks)
        ranked = scores.masked_fill(forced, float("inf")).masked_fill(~causal, float("-inf"))
        if cfg.mass > 0:  # the whole ranking is needed: its prefix is the top k as well
            order = ranked.sort(dim=2, descending=True).indices
            held = scores.masked_fill(~causal, 0).gather(2, order).cumsum(2)
            needed = (held < cfg.mass - 1e-6).sum(2) + 1  # blocks until `mass` is held
            budget = torch.minimum(torch.maximum(budget, needed), last_block + 1)
            top = order[..., :int(budget.max())]
        else:
            top = ranked.topk(int(budget.max()), dim=2).indices  # (heads, q_blocks, k)
        keep = torch.arange(top.shape[2]) < budget[..., None]
        chosen = torch.where(keep, top, key_blocks)  # past-the-end sorts last
        chosen = chosen.sort(dim=2).values
        return torch.where(chosen == key_blocks, -1, chosen)


def dense_pattern(q_offset: int, n_q: int, heads: int, block: int) -> SparsePattern:
    """The pattern of dense causal attention: every query block reads every key block up
    to its own."""
    _, lasts = query_blocks(q_offset, n_q, block)
    last_block = lasts // block
    b = torch.arange(int(last_block[-1]) + 1)
    blocks = torch.where(causal_blocks(last_block, len(b)), b, -1)
    return SparsePattern(block, q_offset, blocks.expand(heads, -1, -1).clone(),
                         torch.empty(heads, 0, dtype=torch.long))


def causal_blocks(last_block: torch.Tensor, key_blocks: int) -> torch.Tensor:
    """(q_blocks, key_blocks) bool: the key blocks each query block may read, up to its
    own (`last_block`, from `query_blocks`' last positions)."""
    return torch.arange(key_blocks)[None, :] <= last_block[:, None]
