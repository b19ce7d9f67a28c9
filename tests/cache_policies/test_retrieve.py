"""Quest, ActQKV and Shadow4 page selection against loop references."""

from __future__ import annotations

import pytest
import torch

from cache_policies.registry import make_config, make_policy
from cache_policies.retrieve.actqkv import activation_probe
from cache_policies.retrieve.quest import page_summaries, upper_bounds
from cache_policies.retrieve.shadow import key_shadow, page_attention, shadow_keys
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
    assert make_policy(make_config("quest", 0.25)).limit(129) == 32  # never over the budget
    assert make_policy(make_config("quest", 0.29)).limit(100) == 29  # not 28: float error
    assert make_policy(make_config("quest", 300)).limit(40) == 18  # 300 tokens: 18 whole pages


# --- shadow4: pages ranked by attention estimated on 4-bit keys -----------------------

@pytest.mark.parametrize("bits", [4, 8])
def test_shadow_keys_are_kivis_rule_applied_per_page(bits):
    keys, _ = data(6, blocks=4, dim=8)
    shadow = key_shadow(keys, BLOCK, bits)
    assert shadow.dtype == torch.uint8 and shadow.shape[:2] == (4, 2)
    ref, _ = reference.kivi_roundtrip(keys, keys, bits, BLOCK)
    torch.testing.assert_close(shadow_keys(shadow, BLOCK, bits), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_page_attention_matches_the_loop_reference(seed):
    keys, queries = data(seed)
    got = page_attention(queries[:, -1], keys, 0.3, BLOCK)
    ref = torch.tensor(reference.page_attention(queries[:, -1], keys, 0.3, BLOCK))
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got.sum(1), torch.full((2,), 3.0))  # 3 query heads per KV head


def test_shadow4_scores_are_page_attention_over_the_dequantized_shadow():
    keys, queries = data(7, blocks=12)
    policy = make_policy(make_config("shadow4", 0.25))
    summaries = policy.summarize(keys)
    assert summaries.shape[0] == 12 * BLOCK // policy.page
    ref, _ = reference.kivi_roundtrip(keys, keys, 4, policy.page)
    torch.testing.assert_close(policy.scores(queries, summaries, 0.4),
                               page_attention(queries[:, -1], ref, 0.4, policy.page),
                               rtol=1e-4, atol=1e-6)


def test_shadow4_finds_the_page_a_query_attends_to_where_quest_bounds_cannot():
    """A page whose keys all point a little along the query (high attention) against pages
    of spread keys, one of whose channels reaches far along it: Quest's box bound
    prefers the spread pages, the estimated attention the aligned one."""
    g = torch.Generator().manual_seed(8)
    dim, page = 16, 16
    query = torch.zeros(3, dim)
    query[:, :2] = torch.tensor([1.0, 1.0])
    keys = torch.randn(1, 8 * page, dim, generator=g) * 0.5
    keys[0, :, :2] = torch.where(torch.arange(8 * page).unsqueeze(1) % 2 == 0,
                                 torch.tensor([4.0, -4.0]), torch.tensor([-4.0, 4.0]))
    keys[0, 3 * page: 4 * page, :2] = 2.5  # page 3: every key aligned with the query
    policy = make_policy(make_config("shadow4", 0.25))
    scores = policy.scores(query.unsqueeze(1), policy.summarize(keys), 1.0)
    assert int(scores.argmax()) == 3
    bounds = upper_bounds(query, page_summaries(keys, page))
    assert int(bounds.argmax()) != 3
