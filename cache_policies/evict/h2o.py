"""H2O (Zhang et al., 2023, https://arxiv.org/abs/2306.14048): heavy hitters, the entries
with the largest attention accumulated over every query so far, plus the most recent
entries; the budget is split evenly between the two."""

from __future__ import annotations

import torch

from cache_policies.base import PolicyInputs, ScorerPolicy, protect_last


class H2O(ScorerPolicy):
    name = "h2o"
    accumulates = True

    def score(self, x: PolicyInputs) -> torch.Tensor:
        assert x.accumulated is not None, "h2o needs the accumulated attention"
        scores = x.accumulated[:, : x.region].float().clone()
        kept_total = x.keep + (x.length - x.region)  # the tail is kept regardless
        return protect_last(scores, x, kept_total // 2)
