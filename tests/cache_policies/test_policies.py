"""Each policy against a loop-by-loop reference of its paper's rule, on small tensors."""

from __future__ import annotations

import pytest
import torch

from cache_policies.base import PolicyInputs, top_positions
from cache_policies.registry import make_config, make_policy, policy_class, policy_names
from tests.cache_policies import reference

KV_HEADS, GROUP, DIM, LENGTH, REGION, KEEP = 2, 3, 8, 48, 40, 14
EVICTING = [n for n in policy_names()
            if n != "full" and not (policy_class(n).packs or policy_class(n).retrieves)]


def inputs(policy, seed: int = 0, smooth: bool = False) -> PolicyInputs:
    gen = torch.Generator().manual_seed(seed)
    keys = torch.randn(KV_HEADS, LENGTH, DIM, generator=gen)
    if smooth:  # runs of similar consecutive keys, so merging sets have several members
        keys = keys.cumsum(dim=1) / torch.arange(1, LENGTH + 1).view(1, -1, 1).sqrt()
    window = min(policy.window, 6)
    return PolicyInputs(
        keys=keys, values=torch.randn(KV_HEADS, LENGTH, DIM, generator=gen),
        queries=torch.randn(KV_HEADS * GROUP, window, DIM, generator=gen),
        scale=DIM ** -0.5, region=REGION, keep=KEEP,
        accumulated=torch.rand(KV_HEADS, LENGTH, generator=gen),
    )


def policy(name):
    return make_policy(make_config(name, 0.5))


@pytest.mark.parametrize("name", ["streaming", "snapkv", "h2o", "tova", "chunkkv",
                                  "chunkkv-reach", "chunkkv_kivi8"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evict_policy_keeps_what_its_paper_keeps(name, seed):
    pol = policy(name.removesuffix("-reach"))  # chunkkv_kivi8 chooses as chunkkv
    params = {}
    if name.startswith("chunkkv"):  # the served chunk would cut the 40-token region in two
        pol.chunk = params["chunk"] = 8
        pol.reach = params["reach"] = 3 if name.endswith("-reach") else 0
        name = "chunkkv"
    x = inputs(pol, seed)
    kept = pol.compress(x)
    assert kept.indices.tolist() == getattr(reference, name)(x, **params)
    index = kept.indices.unsqueeze(-1).expand(-1, -1, DIM)
    assert torch.equal(kept.keys, x.keys.gather(1, index))
    assert torch.equal(kept.values, x.values.gather(1, index))


@pytest.mark.parametrize("name", ["kvmerger", "d2o"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merge_policy_matches_its_paper_rule(name, seed):
    pol = policy(name)
    x = inputs(pol, seed, smooth=True)
    kept = pol.compress(x)
    merged_any = False
    for h, (indices, keys, values) in enumerate(getattr(reference, name)(x)):
        assert kept.indices[h].tolist() == indices
        torch.testing.assert_close(kept.keys[h], keys, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(kept.values[h], values, rtol=1e-4, atol=1e-5)
        merged_any |= not torch.allclose(keys, x.keys[h, indices])
    assert merged_any, "the inputs should make the policy merge something"


@pytest.mark.parametrize("name", EVICTING)
def test_every_policy_keeps_budget_in_order_and_protects_nothing_outside_region(name):
    pol = policy(name)
    x = inputs(pol)
    kept = pol.compress(x)
    assert kept.indices.shape == (KV_HEADS, KEEP)
    assert (kept.indices.diff(dim=1) > 0).all() and int(kept.indices.max()) < REGION
    assert kept.keys.shape == kept.values.shape == (KV_HEADS, KEEP, DIM)


def test_top_positions_keeps_the_highest_scores_and_prefers_recent_on_ties():
    scores = torch.tensor([[5.0, 1.0, 3.0, 3.0, 0.0, 9.0]])
    assert top_positions(scores, 3).tolist() == [[0, 3, 5]]


@pytest.mark.parametrize("window", [1, 5])
def test_attention_over_parts_equals_plain_causal_attention(window):
    """The packed decode path attends over (pinned, dequantized, in-place) parts without
    joining them: same as softmax attention over the joined keys and values, causal for a
    chunk of several queries."""
    from cache_policies.base import attend_parts

    gen = torch.Generator().manual_seed(3)
    keys, values = (torch.randn(KV_HEADS, LENGTH, DIM, generator=gen) for _ in range(2))
    queries = torch.randn(KV_HEADS * GROUP, window, DIM, generator=gen)
    cuts = [0, 7, 30, LENGTH]
    parts = [(keys[:, a:b], values[:, a:b]) for a, b in zip(cuts, cuts[1:])]
    got = attend_parts(queries, parts, DIM ** -0.5)
    q = queries.view(KV_HEADS, GROUP, window, DIM)
    logits = q @ keys.unsqueeze(1).transpose(-1, -2) * DIM ** -0.5
    visible = torch.arange(LENGTH) <= torch.arange(LENGTH - window, LENGTH).view(-1, 1)
    want = logits.masked_fill(~visible, float("-inf")).softmax(-1) @ values.unsqueeze(1)
    torch.testing.assert_close(got, want.reshape(KV_HEADS * GROUP, window, DIM))
