"""StreamingLLM (Xiao et al., 2023, https://arxiv.org/abs/2309.17453): attention sinks
(the first tokens) plus a window of the most recent tokens."""

from __future__ import annotations

import torch

from cache_policies.base import PolicyInputs, ScorerPolicy


class StreamingLLM(ScorerPolicy):
    name = "streaming"
    sinks = 4

    def score(self, x: PolicyInputs) -> torch.Tensor:
        scores = torch.arange(x.region, dtype=torch.float32).expand(x.keys.shape[0], -1).clone()
        scores[:, : self.sinks] = float("inf")
        return scores
