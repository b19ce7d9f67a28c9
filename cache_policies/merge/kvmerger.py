"""KVMerger (Wang et al., 2024, https://arxiv.org/abs/2407.08454): consecutive keys that
stay similar form merging sets; entries that do not survive are merged into a surviving
pivot of their set with Gaussian-kernel weights on key distance.

Under a fixed budget the survivors are the entries the window queries attend to most
(as in SnapKV, without pooling); an evicted entry joins the nearest survivor of its set,
and entries of sets without a survivor are dropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cache_policies.base import (
    Kept, KVPolicy, PolicyInputs, gather_entries, protect_last, top_positions,
    window_votes,
)


def merging_sets(keys: torch.Tensor, threshold: float) -> torch.Tensor:
    """Set id of every entry: a new set starts where a key's cosine similarity to the
    previous key falls below `threshold`. keys (kv_heads, n, dim) -> (kv_heads, n)."""
    similar = F.cosine_similarity(keys[:, 1:].float(), keys[:, :-1].float(), dim=-1)
    starts = torch.cat([torch.ones_like(similar[:, :1]), (similar < threshold).float()], 1)
    return starts.cumsum(dim=1).long()


def nearest_pivot(kept: torch.Tensor, sets: torch.Tensor) -> torch.Tensor:
    """For every entry, the nearest kept position in the same set (the earlier one on a
    tie), or -1. kept (kv_heads, n) bool, sets (kv_heads, n) -> (kv_heads, n)."""
    heads, n = kept.shape
    pos = torch.arange(n).expand(heads, n)
    prev = torch.where(kept, pos, -1).cummax(dim=1).values
    nxt = torch.where(kept, pos, n).flip(1).cummin(dim=1).values.flip(1)
    prev_ok = (prev >= 0) & (sets.gather(1, prev.clamp(min=0)) == sets)
    next_ok = (nxt < n) & (sets.gather(1, nxt.clamp(max=n - 1)) == sets)
    use_prev = prev_ok & (~next_ok | (pos - prev <= nxt - pos))
    return torch.where(use_prev, prev, torch.where(next_ok, nxt, -1))


class KVMerger(KVPolicy):
    name = "kvmerger"
    window = 32
    threshold = 0.75  # cosine similarity that keeps consecutive keys in one set

    def compress(self, x: PolicyInputs) -> Kept:
        votes = window_votes(x)
        indices = top_positions(protect_last(votes, x, x.queries.shape[1]), x.keep)
        kept = torch.zeros(votes.shape, dtype=torch.bool).scatter_(1, indices, True)
        pivot = nearest_pivot(kept, merging_sets(x.keys[:, : x.region], self.threshold))
        merged = (pivot >= 0) & ~kept
        slot = (kept.long().cumsum(dim=1) - 1).gather(1, pivot.clamp(min=0))  # pivot's rank
        return _gaussian_merge(x, gather_entries(x, indices), merged, slot, pivot)


def _gaussian_merge(x, out: Kept, merged, slot, pivot) -> Kept:
    """Fold every merged entry i into its pivot p: weight exp(-|k_i - k_p|^2 / 2s^2),
    the pivot itself weight 1, s^2 the mean squared distance of the pivot's members."""
    heads, _, dim = x.keys.shape
    keys = x.keys[:, : x.region].float()
    values = x.values[:, : x.region].float()
    pivot_keys = keys.gather(1, pivot.clamp(min=0).unsqueeze(-1).expand(-1, -1, dim))
    dist2 = ((keys - pivot_keys) ** 2).sum(-1) * merged
    slot = torch.where(merged, slot, 0)
    zeros = torch.zeros(heads, x.keep)
    spread = zeros.scatter_add(1, slot, dist2) / zeros.scatter_add(1, slot, merged.float()).clamp(min=1)
    weight = torch.exp(-dist2 / (2 * spread.gather(1, slot).clamp(min=1e-12))) * merged
    norm = 1 + zeros.scatter_add(1, slot, weight)
    index = slot.unsqueeze(-1).expand(-1, -1, dim)
    new_keys = out.keys.float().scatter_add(1, index, keys * weight.unsqueeze(-1))
    new_values = out.values.float().scatter_add(1, index, values * weight.unsqueeze(-1))
    dtype = x.keys.dtype
    return Kept(out.indices, (new_keys / norm.unsqueeze(-1)).to(dtype),
                (new_values / norm.unsqueeze(-1)).to(dtype))
