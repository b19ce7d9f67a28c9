"""LSH-hashed block selection in the spirit of MagicPIG (arXiv:2410.16179) and HAX: keys
and queries are hashed with signed random projections (SimHash; keys centred, which does
not change a query's ranking of keys); a key block scores by how many (query, key) pairs
of the query block share a bucket, summed over hash tables."""

from __future__ import annotations

import torch

from attention_backends.sparse.patterns.base import PatternEstimator

SEED = 20240617


def simhash(x: torch.Tensor, planes: torch.Tensor) -> torch.Tensor:
    """x (..., dim), planes (tables, bits, dim) -> bucket ids (tables, ...) int64."""
    signs = torch.einsum("...d,tbd->t...b", x, planes) > 0
    weights = 2 ** torch.arange(planes.shape[1], device=x.device)
    return (signs.long() * weights).sum(-1)


def block_histograms(buckets: torch.Tensor, block: int, n_buckets: int,
                     offset: int = 0) -> torch.Tensor:
    """buckets (tables, heads, n), the first at position `offset` -> (tables, heads, blocks,
    n_buckets) counts per aligned block of positions."""
    tables, heads, n = buckets.shape
    first = offset // block
    blocks = (offset + n - 1) // block - first + 1
    positions = offset + torch.arange(n, device=buckets.device)
    index = (positions // block - first) * n_buckets + buckets
    out = torch.zeros(tables, heads, blocks * n_buckets, device=buckets.device)
    out.scatter_add_(2, index, torch.ones(buckets.shape, device=buckets.device))
    return out.view(tables, heads, blocks, n_buckets)


class LSH(PatternEstimator):
    def scores(self, q, k, q_offset, scale):
        cfg = self.config
        generator = torch.Generator().manual_seed(SEED)
        planes = torch.randn(cfg.tables, cfg.bits, q.shape[2], generator=generator).to(q.device)
        keys = k.transpose(0, 1).float()
        keys = keys - keys.mean(1, keepdim=True)
        n_buckets = 2 ** cfg.bits
        q_hist = block_histograms(simhash(q.transpose(0, 1).float(), planes), cfg.block,
                                  n_buckets, q_offset)
        k_hist = block_histograms(simhash(keys, planes), cfg.block, n_buckets)
        k_hist = k_hist.repeat_interleave(q.shape[1] // k.shape[1], 1)  # per query head
        return (q_hist @ k_hist.transpose(-1, -2)).sum(0), None  # collisions over tables
