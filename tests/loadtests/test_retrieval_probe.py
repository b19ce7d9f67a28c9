"""The retrieval probe's pieces (loadtests/retrieval_probe.py): variant names, the mask
it attends through (the server's selection, within the budget, sinks and recent pages and
the block being written always in), and SparQ's estimate with every channel being the
exact attention."""

from __future__ import annotations

import argparse

import pytest
import torch

from cache_policies.retrieve.shadow import page_attention
from loadtests.retrieval_probe import BLOCK, Rule, make_policy, page_mask, parse_rule, sparq_scores


def test_rule_names():
    assert parse_rule("quest") == Rule("quest")
    assert parse_rule("shadow4-d2-p8") == Rule("shadow4", dense_layers=2, page=8)
    assert parse_rule("sparq16") == Rule("sparq16")
    for bad in ("quests", "shadow", "oracle-p7", "quest-p8-d2"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_rule(bad)


@pytest.mark.parametrize("name", ["quest", "oracle", "shadow4", "sparq8"])
def test_mask_keeps_the_budget_and_the_forced_pages(name):
    g = torch.Generator().manual_seed(0)
    length = 5 * BLOCK + 40  # 5 full blocks (40 pages of 16), 40 entries being written
    keys, query = torch.randn(3, length, 64, generator=g), torch.randn(9, 64, generator=g)
    policy = make_policy(parse_rule(name), 0.25)
    mask = page_mask(policy, query, keys, 0.125)
    pages = mask[:, : 5 * BLOCK].view(3, 40, 16)
    assert (pages.all(-1) == pages.any(-1)).all()  # whole pages
    assert mask[:, 5 * BLOCK:].all() and pages[:, 0].all() and pages[:, -2:].all()
    assert (pages.all(-1).sum(1) == policy.limit(43) - 3).all()  # 43 pages, 3 being written


def test_sparq_with_every_channel_is_the_exact_attention():
    g = torch.Generator().manual_seed(1)
    keys, query = torch.randn(3, 64, 64, generator=g), torch.randn(9, 64, generator=g)
    torch.testing.assert_close(sparq_scores(query, keys, 64, 16),
                               page_attention(query, keys, 64 ** -0.5, 16))
