"""ActQKV (Xiao et al., 2025), adapted to block retrieval in a paged cache.

Two changes to Quest's rule, after the paper:
- Activation-aware probe query: rather than the current query alone, a weighted sum of
  the last `window` queries, each weighted by its activation bias: how far its channels
  stray from the window's mean, in units of the window's variance
  (sum_j (q_tj - mean_j)^2 / var_j). Queries carrying unusual activations (the tokens
  that anchor the question) steer retrieval.
- Dynamic cut-off: block bounds, scaled as logits, become a softmax over blocks; each KV
  head keeps its best blocks until they hold `mass` of it, `budget` at most. A layer
  whose attention is concentrated reads few blocks; a diffuse one reads up to the budget.
"""

from __future__ import annotations

import torch

from cache_policies.retrieve.quest import BlockRetriever, upper_bounds


def activation_probe(queries: torch.Tensor) -> torch.Tensor:
    """queries (heads, W, dim) -> (heads, dim), the activation-bias-weighted sum."""
    q = queries.float()
    if q.shape[1] == 1:
        return q[:, 0]
    mean = q.mean(dim=1, keepdim=True)
    var = q.var(dim=1, keepdim=True, unbiased=False).clamp_min(1e-6)
    bias = ((q - mean) ** 2 / var).sum(-1)  # (heads, W)
    weights = bias / bias.sum(dim=1, keepdim=True).clamp_min(1e-6)
    return (weights.unsqueeze(-1) * q).sum(1)


class ActQKV(BlockRetriever):
    name = "actqkv"
    window = 16
    mass = 0.9

    def scores(self, queries, summaries, scale):
        return upper_bounds(activation_probe(queries), summaries)

    def cut(self, scores, scale, keep):
        probs = (scores * scale).softmax(dim=1).sort(dim=1, descending=True).values
        reached = (probs.cumsum(dim=1) < self.mass).sum(dim=1) + 1  # blocks to reach mass
        return reached.clamp(max=keep)
