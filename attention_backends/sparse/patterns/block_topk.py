"""Block-sparse top-k: mean-pooled queries of a block against mean-pooled keys of each key
block, the best blocks attended (MInference's block-sparse pattern, arXiv:2407.02490)."""

from __future__ import annotations

import torch

from attention_backends.sparse.patterns.base import PatternEstimator, expand_heads, pool


class BlockTopK(PatternEstimator):
    def scores(self, q, k, q_offset, scale):
        block = self.config.block
        pooled_q = pool(q.transpose(0, 1).float(), block, q_offset)
        pooled_k = pool(expand_heads(k.float(), q.shape[1]), block)
        return pooled_q @ pooled_k.transpose(1, 2), None

    def shares(self, scores, causal, scale):
        """The softmax of the pooled logits over the causal blocks (FlexPrefill's block
        estimate)."""
        return torch.softmax(scores.mul(scale).masked_fill(~causal, float("-inf")), dim=-1)
