"""Quest and ActQKV page selection against loop references."""

from __future__ import annotations

import pytest
import torch

from cache_policies.registry import make_config, make_policy
from cache_policies.retrieve.actqkv import activation_probe
from cache_policies.retrieve.quest import page_summaries, upper_bounds
from tests.cache_policies import reference

BLOCK = 8


def data(seed: int, kv_heads=2, group=3, blocks=7, dim=6):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(kv_heads, blocks * BLOCK, dim, generator=g)
    queries = torch.randn(kv_heads * group, 5, dim, generator=g)
    return keys, queries


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quest_bounds_match_the_paper_rule(seed):
    keys, queries = data(seed)
    got = upper_bounds(queries[:, -1], page_summaries(keys, BLOCK))
    ref = torch.tensor(reference.quest_bounds(queries[:, -1], keys, BLOCK))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_bound_is_an_upper_bound_of_every_logit_in_the_block():
    keys, queries = data(3)
    bounds = upper_bounds(queries[:, -1], page_summaries(keys, BLOCK))
    logits = torch.einsum("hgd,hpd->hgp", queries[:, -1].view(2, 3, -1), keys)
    best = logits.view(2, 3, -1, BLOCK).amax(-1).amax(1)  # (kv_heads, blocks)
    assert (bounds >= best - 1e-5).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_activation_probe_matches_the_paper_rule(seed):
    _, queries = data(seed)
    torch.testing.assert_close(activation_probe(queries), reference.activation_probe(queries),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["quest", "actqkv"])
def test_selection_keeps_sinks_recent_and_best_within_budget(name):
    keys, queries = data(4, blocks=12)
    policy = make_policy(make_config(name, 0.5))
    summaries = page_summaries(keys, BLOCK)  # 12 candidate pages
    mask = policy.select(queries, summaries, 0.125, 6, recent=2)
    assert mask.shape == (2, 12)
    assert mask[:, 0].all() and mask[:, -2:].all()  # the sink page and the recent pages
    assert (mask.sum(1) <= 6).all()
    if name == "quest":  # exactly the budget, the best bounds among the rest
        bounds = upper_bounds(queries[:, -1], summaries)
        for h in range(2):
            assert int(mask[h].sum()) == 6
            rest = bounds[h, 1:-2]
            chosen = mask[h, 1:-2]
            assert rest[chosen].min() >= rest[~chosen].max()


def test_actqkv_cut_keeps_fewer_pages_when_attention_is_concentrated():
    keys, queries = data(5, blocks=16)
    policy = make_policy(make_config("actqkv", 1.0))
    spread = policy.select(queries, page_summaries(keys, BLOCK), 1e-3, 16, recent=1)
    keys[:, 5 * BLOCK: 6 * BLOCK] = 50 * queries[:, -1].view(2, 3, -1).mean(1, keepdim=True)
    focused = policy.select(queries, page_summaries(keys, BLOCK), 1.0, 16, recent=1)
    assert focused.sum(1).max() < spread.sum(1).min()
    assert focused[:, 5].all()


def test_budget_counts_whole_pages():
    assert make_policy(make_config("quest", 0.25)).limit(40) == 10
    assert make_policy(make_config("quest", 300)).limit(40) == 19  # 300 tokens: 19 pages
