"""Pattern estimators (attention_backends/sparse/patterns): the budget, causality, sink and
local blocks they promise, that each finds what its rule is for, and the CPU fast path
(vLLM's kernel over per-query-block block tables) against the reference."""

from __future__ import annotations

import math

import pytest
import torch

from attention_backends.sparse.config import SparseConfig
from attention_backends.sparse.patterns import make_estimator
from attention_backends.sparse.patterns.base import dense_pattern, query_blocks
from kernels.sparse_attention import naive

METHODS = ["vertical_slash", "block_topk", "lsh"]
HEADS, KV_HEADS, DIM, BLOCK = 6, 2, 32, 32


def random_qk(n_keys, q_offset, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n_keys - q_offset, HEADS, DIM, generator=gen),
            torch.randn(n_keys, KV_HEADS, DIM, generator=gen))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n_keys,q_offset", [(640, 0), (650, 300)])
def test_budget_causality_sink_and_local(method, n_keys, q_offset):
    config = SparseConfig(method=method, density=0.25, block=BLOCK, sink=32, local=64, last_q=16)
    q, k = random_qk(n_keys, q_offset)
    pattern = make_estimator(config).estimate(q, k, q_offset, 0.2)
    starts, lasts = query_blocks(q_offset, q.shape[0], BLOCK)
    for j, (start, last) in enumerate(zip(starts.tolist(), lasts.tolist())):
        causal = last // BLOCK + 1
        forced = {0} | set(range(max(0, start - 64) // BLOCK, causal))
        for h in range(HEADS):
            chosen = [b for b in pattern.blocks[h, j].tolist() if b >= 0]
            assert chosen == sorted(set(chosen))
            assert max(chosen) < causal  # nothing from the future
            assert forced <= set(chosen)
            assert len(chosen) == max(len(forced), math.ceil(0.25 * causal))


def test_the_prompt_tail_attends_densely():
    """The query blocks holding the last `dense_tail` queries read every causal block;
    the others keep their budget."""
    q, k = random_qk(650, 300)
    estimator = make_estimator(SparseConfig(density=0.2, block=BLOCK, sink=32, local=32))
    pattern = estimator.estimate(q, k, 300, 0.2, dense_tail=40)
    valid = (pattern.blocks >= 0).sum(-1)  # (heads, q_blocks)
    assert (valid[:, -2:] == torch.tensor([20, 21])).all()  # queries 610..649: blocks 19, 20
    assert (valid[:, :-2] < torch.arange(10, 20)).all()  # blocks 9..18: 10..19 causal


@pytest.mark.parametrize("method", METHODS)
def test_density_one_selects_every_block(method):
    q, k = random_qk(500, 130)
    pattern = make_estimator(SparseConfig(method=method, density=1.0, block=BLOCK)).estimate(
        q, k, 130, 0.2)
    assert pattern.density(q.shape[0]) == 1.0


@pytest.mark.parametrize("n_keys,q_offset", [(500, 0), (500, 130), (500, 499)])
def test_dense_pattern_is_every_causal_block(n_keys, q_offset):
    """What a layer below `dense_layers` attends: every causal block, as density 1.0."""
    q, k = random_qk(n_keys, q_offset)
    full = make_estimator(SparseConfig(density=1.0, block=BLOCK)).estimate(
        q, k, q_offset, 0.2, per_kv_head=True)
    dense = dense_pattern(q_offset, q.shape[0], KV_HEADS, BLOCK)
    assert torch.equal(dense.blocks, full.blocks) and dense.columns.shape == (KV_HEADS, 0)
    assert dense.expand(HEADS).density(q.shape[0]) == 1.0


def planted(kind: str, seed=1):
    """Queries and keys where one far key block clearly matters: a block of keys aligned
    with every query (vertical), or keys that repeat the queries at a fixed distance
    (slash)."""
    q, k = random_qk(1024, 0, seed)
    q, k = q * 0.3, k * 0.3
    direction = torch.randn(DIM)
    if kind == "vertical":
        q += direction
        k[200:232] += 3 * direction  # key block 6
        return q, k, 6
    k[:-256] += 2 * q[256:, ::3]  # key t looks like query t + 256: a slash at offset 256
    return q, k, None


@pytest.mark.parametrize("method", METHODS)
def test_a_block_every_query_needs_is_selected(method):
    q, k, block = planted("vertical")
    config = SparseConfig(method=method, density=0.25, block=BLOCK, sink=32, local=32, last_q=32)
    pattern = make_estimator(config).estimate(q, k, 0, DIM ** -0.5, per_kv_head=True)
    late = pattern.blocks[:, 16:]  # query blocks far past it
    assert (late == block).any(-1).float().mean() > 0.9


def test_vertical_slash_follows_a_slash():
    q, k, _ = planted("slash")
    config = SparseConfig(density=0.3, block=BLOCK, sink=32, local=32, last_q=64)
    pattern = make_estimator(config).estimate(q, k, 0, DIM ** -0.5, per_kv_head=True)
    # query block j reads keys 256 earlier: key blocks j - 8 (and j - 9 across the edge)
    hits = [((pattern.blocks[:, j] == j - 8) | (pattern.blocks[:, j] == j - 9)).any(-1)
            for j in range(16, 32)]
    assert torch.stack(hits).float().mean() > 0.9


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n_keys,q_offset", [(640, 0), (650, 300)])
def test_mass_keeps_the_fewest_blocks_holding_that_share(method, n_keys, q_offset):
    """With `mass`, per KV head and query block: the forced blocks, then blocks by share
    until the kept ones hold `mass` of the estimate (never fewer than `density` gives),
    checked against a loop over the shares."""
    config = SparseConfig(method=method, density=0.1, mass=0.8, block=BLOCK, sink=32,
                          local=32, last_q=16)
    q, k = random_qk(n_keys, q_offset)
    estimator = make_estimator(config)
    pattern = estimator.estimate(q, k, q_offset, DIM ** -0.5, per_kv_head=True)
    scores, _ = estimator.scores(q, k, q_offset, DIM ** -0.5)
    starts, lasts = query_blocks(q_offset, q.shape[0], BLOCK)
    key_blocks = scores.shape[2]
    causal = torch.arange(key_blocks)[None, :] <= (lasts // BLOCK)[:, None]
    shares = estimator.shares(scores.float(), causal, DIM ** -0.5)
    assert torch.allclose(shares.sum(-1), torch.ones(()))
    shares = shares.view(KV_HEADS, -1, *shares.shape[1:]).mean(1)
    grew = 0
    for j, (start, last) in enumerate(zip(starts.tolist(), lasts.tolist())):
        n_causal = last // BLOCK + 1
        forced = [0] + list(range(max(0, start - 32) // BLOCK, n_causal))
        for h in range(KV_HEADS):
            rest = sorted(set(range(n_causal)) - set(forced), key=lambda b: -shares[h, j, b])
            kept, held = [], 0.0
            for b in dict.fromkeys(forced + rest):
                if len(kept) >= max(len(set(forced)), math.ceil(0.1 * n_causal)) \
                        and held >= 0.8 - 1e-6:
                    break
                kept.append(b)
                held += float(shares[h, j, b])
            chosen = [b for b in pattern.blocks[h, j].tolist() if b >= 0]
            assert chosen == sorted(kept)
            grew += len(chosen) > max(len(set(forced)), math.ceil(0.1 * n_causal))
    assert grew  # the cut-off, not the density, decided somewhere


def test_mass_gives_diffuse_heads_more_blocks_than_concentrated_ones():
    """One KV head's queries and keys are all alike (every key block equally likely: it
    needs ~`mass` of its blocks); the other's queries point at one key block (it needs
    only its forced blocks and that one, which slash lines may spread to its neighbour)."""
    n = 1024
    gen = torch.Generator().manual_seed(3)
    q = torch.zeros(n, HEADS, DIM)
    k = torch.randn(n, KV_HEADS, DIM, generator=gen) * 0.01
    direction = torch.randn(DIM, generator=gen)
    q[:, HEADS // 2:] = 4 * direction
    k[200:232, 1] += 4 * direction  # key block 6, for KV head 1
    config = SparseConfig(density=0.05, mass=0.7, block=BLOCK, sink=32, local=32, last_q=64)
    pattern = make_estimator(config).estimate(q, k, 0, DIM ** -0.5, per_kv_head=True)
    valid = (pattern.blocks[:, -1] >= 0).sum(-1)  # the last query block: 32 causal blocks
    assert valid[0] >= 0.7 * 32 - 1
    assert valid[1] <= 5 and 6 in pattern.blocks[1, -1].tolist()  # 0, 30, 31 forced


def test_block_topk_shares_are_the_softmax_of_pooled_logits():
    q, k = random_qk(300, 0)
    estimator = make_estimator(SparseConfig(method="block_topk", block=BLOCK))
    scores, _ = estimator.scores(q, k, 0, 0.2)
    causal = torch.ones(10, 10, dtype=torch.bool).tril()
    shares = estimator.shares(scores, causal, 0.2)
    for j in range(10):
        expected = torch.softmax(0.2 * scores[:, j, : j + 1], -1)
        assert torch.allclose(shares[:, j, : j + 1], expected)
        assert (shares[:, j, j + 1:] == 0).all()


def test_config_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match="unknown sparse method 'nope'"):
        SparseConfig(method="nope")
    with pytest.raises(ValueError, match="density must be in"):
        SparseConfig(density=0)
    with pytest.raises(ValueError, match="mass must be in"):
        SparseConfig(mass=1.5)
    with pytest.raises(ValueError, match="unknown sparse attention parameter"):
        SparseConfig.from_dict({"desnity": 0.5})
    with pytest.raises(ValueError, match="min_len must be int"):
        SparseConfig(min_len="4k")
    with pytest.raises(ValueError, match="dense_layers must be >= 0"):
        SparseConfig(dense_layers=-1)


@pytest.mark.parametrize("method,columns", [(m, 0) for m in METHODS] + [("vertical_slash", 8)])
def test_scores_stay_on_the_queries_device(method, columns):
    """On CUDA the scores run on the GPU: no host tensor may enter them. The meta device
    stands in for it here (mixing a host tensor with a meta one raises, as with CUDA)."""
    config = SparseConfig(method=method, density=0.3, block=BLOCK, sink=32, local=32,
                          last_q=16, columns=columns)
    q = torch.empty(350, HEADS, DIM, device="meta")
    k = torch.empty(650, KV_HEADS, DIM, device="meta")
    scores, found = make_estimator(config).scores(q, k, 300, 0.2)
    assert scores.device.type == "meta" and scores.shape == (HEADS, 12, 21)
    assert found is None or found.device.type == "meta"


# --- the CPU fast path: vLLM's kernel with per-query-block block tables -----------------

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n_keys,q_offset", [(1000, 0), (1100, 640), (1000, 700)],
                         ids=["prompt", "aligned-chunk", "unaligned-chunk"])
def test_cpu_path_matches_reference(method, n_keys, q_offset):
    from vllm import _custom_ops as ops
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    from attention_backends.sparse.cpu import paged_sparse_attention

    block, heads, kv_heads, dim = 128, 9, 3, 64
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(n_keys - q_offset, heads, dim, generator=gen).bfloat16()
    k = torch.randn(n_keys, kv_heads, dim, generator=gen).bfloat16()
    v = torch.randn(n_keys, kv_heads, dim, generator=gen).bfloat16()
    isa = _get_attn_isa(torch.bfloat16, block, dim)
    blocks = -(-n_keys // block)
    table = torch.randperm(blocks + 4, generator=gen)[:blocks]  # scattered physical blocks
    cache = torch.zeros(blocks + 4, kv_heads, block, 2 * dim, dtype=torch.bfloat16)
    key_cache, value_cache = cache.view(blocks + 4, kv_heads, 2 * block, dim).chunk(2, dim=2)
    slots = table.repeat_interleave(block)[:n_keys] * block + torch.arange(n_keys) % block
    ops.cpu_attn_reshape_and_cache(k, v, key_cache, value_cache, slots, isa)

    config = SparseConfig(method=method, density=0.3, block=block, sink=64, local=128)
    pattern = make_estimator(config).estimate(q, k, q_offset, 0.125, per_kv_head=True)
    out = torch.empty_like(q)
    attended = paged_sparse_attention(q, cache, table, pattern, 0.125, isa, out)
    expected = naive.sparse_attention(q, k, v, pattern, 0.125)
    torch.testing.assert_close(out.float(), expected.float(), atol=2e-2, rtol=0)
    assert attended == int(pattern.expand(heads).mask(q.shape[0]).sum())
    assert pattern.density(q.shape[0]) < 0.95
