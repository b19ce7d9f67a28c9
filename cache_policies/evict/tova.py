"""TOVA (Oren et al., 2024, https://arxiv.org/abs/2401.06104): keep the entries the
current (last) query attends to most, attention averaged over all heads of the layer,
so every head keeps the same positions."""

from __future__ import annotations

import torch

from cache_policies.base import PolicyInputs, ScorerPolicy, window_attention


class TOVA(ScorerPolicy):
    name = "tova"

    def score(self, x: PolicyInputs) -> torch.Tensor:
        last = window_attention(x)[:, :, -1, : x.region]  # (kv_heads, group, region)
        return last.mean(dim=(0, 1)).expand(x.keys.shape[0], -1).clone()
