"""ChunkKV (Liu et al., 2025, https://arxiv.org/abs/2502.00299): keep whole chunks of
consecutive tokens, scored by the attention the observation window pays to the chunk,
so that a fact survives as a unit rather than as its most-attended tokens (a number
keeps all its digits). Scores as in SnapKV, summed per chunk instead of max-pooled, and
averaged over the layer's KV heads so that every head keeps the same chunks (as TOVA's
head-shared choice, which beat per-head choices on the default model; BENCHMARKS.md).
Chunks are 32 tokens, about one needle sentence: at 4k tokens and a 0.35 budget they kept
88-92% of the full-cache score where 16-token chunks kept 81% (two sample sets; BENCHMARKS
issue 4, section 1c). The 8 tokens after a chunk score at least as the chunk (`reach`), so
a number that a chunk boundary cuts keeps its tail: 93-96% on the same sets (section 1e)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cache_policies.base import PolicyInputs, ScorerPolicy, protect_last, window_votes


class ChunkKV(ScorerPolicy):
    name = "chunkkv"
    window = 32
    chunk = 32
    reach = 8  # the first `reach` tokens after a chunk score at least as the chunk does

    def score(self, x: PolicyInputs) -> torch.Tensor:
        votes = window_votes(x).mean(dim=0, keepdim=True)
        pad = -x.region % self.chunk
        chunks = F.pad(votes, (0, pad)).view(1, -1, self.chunk).sum(dim=-1)
        scores = chunks.repeat_interleave(self.chunk, dim=1)[:, : x.region]
        if self.reach:
            scores = torch.maximum(scores, F.pad(scores, (self.reach, 0))[:, : x.region])
        scores = scores.expand(x.keys.shape[0], -1).contiguous()
        return protect_last(scores, x, x.queries.shape[1])
