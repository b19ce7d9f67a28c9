"""D2O's merge (Wan et al., 2024, https://arxiv.org/abs/2406.13035): an evicted entry is
folded into the survivor whose key is most similar (cosine), when that similarity is at
least the threshold (the mean such similarity, D2O's EMA threshold for one step); weights
are a softmax over similarities with the survivor itself at similarity 1.

Survivors are chosen as in SnapKV (window attention, without pooling).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cache_policies.base import (
    Kept, KVPolicy, PolicyInputs, gather_entries, protect_last, top_positions,
    window_votes,
)


class D2O(KVPolicy):
    name = "d2o"
    window = 32

    def compress(self, x: PolicyInputs) -> Kept:
        votes = window_votes(x)
        indices = top_positions(protect_last(votes, x, x.queries.shape[1]), x.keep)
        out = gather_entries(x, indices)
        heads, region = votes.shape
        evicted = torch.ones(heads, region, dtype=torch.bool).scatter_(1, indices, False)
        keys = x.keys[:, :region].float()
        sims = F.normalize(keys, dim=-1) @ F.normalize(out.keys.float(), dim=-1).transpose(1, 2)
        best, slot = sims.max(dim=-1)  # (heads, region): most similar survivor
        count = evicted.sum(dim=1, keepdim=True).clamp(min=1)
        threshold = (best * evicted).sum(dim=1, keepdim=True) / count
        merged = evicted & (best >= threshold)
        weight = torch.exp(best) * merged
        zeros = torch.zeros(heads, x.keep)
        norm = torch.e + zeros.scatter_add(1, slot, weight)  # the survivor: exp(1)
        index = slot.unsqueeze(-1).expand(-1, -1, keys.shape[-1])
        values = x.values[:, :region].float()
        new_keys = (out.keys.float() * torch.e).scatter_add(1, index, keys * weight.unsqueeze(-1))
        new_values = (out.values.float() * torch.e).scatter_add(
            1, index, values * weight.unsqueeze(-1))
        dtype = x.keys.dtype
        return Kept(indices, (new_keys / norm.unsqueeze(-1)).to(dtype),
                    (new_values / norm.unsqueeze(-1)).to(dtype))
