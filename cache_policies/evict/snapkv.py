"""SnapKV (Li et al., 2024, https://arxiv.org/abs/2404.14469): the last `window` queries
vote for the entries they attend to; votes are max-pooled along the sequence so that
neighbours of a chosen entry survive with it; the window itself is always kept."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cache_policies.base import PolicyInputs, ScorerPolicy, protect_last, window_votes


class SnapKV(ScorerPolicy):
    name = "snapkv"
    window = 32
    kernel = 7

    def score(self, x: PolicyInputs) -> torch.Tensor:
        votes = window_votes(x)
        pooled = F.max_pool1d(votes.unsqueeze(1), self.kernel, stride=1,
                              padding=self.kernel // 2).squeeze(1)
        return protect_last(pooled, x, x.queries.shape[1])
