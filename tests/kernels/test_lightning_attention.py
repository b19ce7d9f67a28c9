"""Lightning attention: the recurrence against its definition, the block-wise form and
chunked prefill against the recurrence, and the batched CPU path and the Triton kernels
(under Triton's interpreter) against the reference."""

from __future__ import annotations

import pytest
import torch

from kernels.lightning_attention import cpu, naive
from kernels.lightning_attention import triton as triton_kernel


def qkv(tokens: int, heads: int = 4, dim: int = 16, seed: int = 0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(tokens, heads, dim, generator=gen) * 0.3).to(dtype) for _ in range(3)]


def definition(q, k, v, slopes):
    """o_t = sum_{j<=t} lambda^(t-j) (q_t . k_j) v_j, all pairs at once."""
    t = torch.arange(q.shape[0], dtype=torch.float32)
    gap = t[:, None] - t[None, :]
    weight = torch.where(gap >= 0, torch.exp(-slopes[:, None, None] * gap.clamp(min=0)), 0.0)
    scores = torch.einsum("thd,jhd->htj", q, k) * weight
    return torch.einsum("htj,jhe->the", scores, v)


def test_recurrence_is_the_definition():
    q, k, v = qkv(40)
    slopes = naive.slopes_for(4)
    out, _ = naive.recurrent(q, k, v, slopes)
    torch.testing.assert_close(out, definition(q, k, v, slopes), atol=1e-5, rtol=1e-5)


def test_minimax_slopes():
    assert naive.slopes_for(8).tolist() == [2.0 ** -(i + 1) for i in range(8)]
    assert len(naive.slopes_for(6)) == 6  # not a power of two


@pytest.mark.parametrize("tokens, block", [(1, 16), (16, 16), (100, 16), (300, 64), (257, 256)])
def test_blockwise_is_the_recurrence(tokens, block):
    q, k, v = qkv(tokens, seed=tokens)
    slopes = naive.slopes_for(4)
    start = torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(1)) * 0.1
    want, want_state = naive.recurrent(q, k, v, slopes, start)
    got, state = naive.blockwise(q, k, v, slopes, start, block=block)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(state, want_state, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("cuts", [[77], [1, 2, 3], [128, 129], [50, 200, 250]])
def test_chunked_prefill_carries_the_state(cuts):
    q, k, v = qkv(300, seed=3)
    slopes = naive.slopes_for(4)
    whole, whole_state = naive.blockwise(q, k, v, slopes, block=64)
    outs, state = [], None
    for lo, hi in zip([0, *cuts], [*cuts, 300]):
        out, state = naive.blockwise(q[lo:hi], k[lo:hi], v[lo:hi], slopes, state, block=64)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs), whole, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(state, whole_state, atol=2e-5, rtol=1e-4)


def batch(lengths, seed=0, heads=4, dim=16):
    q, k, v = qkv(sum(lengths), heads, dim, seed)
    starts = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    return q, k, v, starts


def reference_batch(q, k, v, slopes, starts, cache, slots, fresh):
    outs, cache = [], cache.clone()
    for b in range(len(slots)):
        lo, hi = int(starts[b]), int(starts[b + 1])
        state = None if fresh[b] else cache[slots[b]]
        out, cache[slots[b]] = naive.recurrent(q[lo:hi], k[lo:hi], v[lo:hi], slopes, state)
        outs.append(out)
    return torch.cat(outs), cache


@pytest.mark.parametrize("impl", ["cpu", "triton"])
def test_batched_prefill_then_decode(impl):
    """Mixed lengths, one request continuing from its slot's state, one starting fresh on
    a slot holding another request's leftovers; then three decode steps."""
    module = cpu if impl == "cpu" else triton_kernel
    heads, dim = 4, 16
    slopes = naive.slopes_for(heads)
    lengths = [5, 70, 33]
    q, k, v, starts = batch(lengths)
    cache = torch.randn(6, heads, dim, dim, generator=torch.Generator().manual_seed(9)) * 0.1
    slots, fresh = torch.tensor([4, 1, 2]), torch.tensor([True, False, True])
    want, want_cache = reference_batch(q, k, v, slopes, starts, cache, slots, fresh)
    got_cache = cache.clone()
    kwargs = {"block": 16} if impl == "triton" else {"block": 32}
    got = module.prefill(q, k, v, slopes, starts, got_cache, slots, fresh, **kwargs)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_cache, want_cache, atol=1e-4, rtol=1e-4)
    for step in range(3):
        dq, dk, dv = qkv(3, heads, dim, seed=100 + step)
        out = module.decode(dq, dk, dv, slopes, got_cache, slots)
        for b in range(3):
            ref, want_cache[slots[b]] = naive.recurrent(dq[b:b + 1], dk[b:b + 1], dv[b:b + 1],
                                                         slopes, want_cache[slots[b]])
            torch.testing.assert_close(out[b], ref[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_cache, want_cache, atol=1e-4, rtol=1e-4)
    untouched = [s for s in range(6) if s not in slots.tolist()]
    assert torch.equal(got_cache[untouched], cache[untouched])


def test_bf16_inputs_keep_a_float32_state():
    q, k, v = qkv(90, dtype=torch.bfloat16)
    slopes = naive.slopes_for(4)
    out, state = naive.blockwise(q, k, v, slopes, block=32)
    want, _ = naive.recurrent(q.float(), k.float(), v.float(), slopes)
    assert out.dtype == torch.bfloat16 and state.dtype == torch.float32
    torch.testing.assert_close(out.float(), want, atol=2e-2, rtol=2e-2)


def test_layer_decay_rates_are_hugging_faces():
    from transformers import MiniMaxConfig
    from transformers.models.minimax.modeling_minimax import MiniMaxLightningAttention

    from attention_backends.lightning.layer import slope_rates

    config = MiniMaxConfig(hidden_size=96, num_attention_heads=6, head_dim=16,
                           num_hidden_layers=5, block_size=32,
                           layer_types=["linear_attention"] * 5)
    for layer in range(5):
        theirs = MiniMaxLightningAttention(config, layer).slope_rate.flatten()
        torch.testing.assert_close(slope_rates(6, layer, 5), theirs.float())


def test_minimax_original_config_names():
    """MiniMax-Text-01's own config names win over transformers' defaults."""
    from transformers import MiniMaxConfig

    from attention_backends.lightning.model import layer_kinds, residual_factors

    original = MiniMaxConfig(num_hidden_layers=4, attn_type_list=[0, 0, 0, 1],
                             layernorm_full_attention_alpha=3.5, layernorm_mlp_beta=0.5)
    assert layer_kinds(original) == ["linear_attention"] * 3 + ["full_attention"]
    assert residual_factors(original, "full_attn") == (3.5, 1)
    assert residual_factors(original, "mlp") == (1, 0.5)
    converted = MiniMaxConfig(num_hidden_layers=2, layer_types=["full_attention",
                                                                "linear_attention"],
                              linear_attn_beta_factor=2.0)
    assert layer_kinds(converted) == ["full_attention", "linear_attention"]
    assert residual_factors(converted, "linear_attn") == (1, 2.0)
