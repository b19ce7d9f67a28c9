"""The shared-KV-head decode route inside longserve's CPU attention impl, against vLLM's
own CPU kernel on the same cache (written by vLLM's cache writer), without an engine: a
batch of decodes and a prefill chunk over a cached prefix, in one call."""

from __future__ import annotations

import types

import pytest
import torch

vllm_ops = pytest.importorskip("vllm._custom_ops")

HEADS, DIM, BLOCK = 64, 256, 32


def batch(dtype):
    """Rows: decode (40 cached), decode (7 cached), a 20-token chunk after 33 cached,
    decode (100 cached). Each row's keys/values already in the cache (vLLM writes them
    before attention)."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionMetadata, _get_attn_isa

    gen = torch.Generator().manual_seed(0)
    seq_lens = [41, 8, 53, 101]  # query lengths 1, 1, 20, 1
    blocks_each = [-(-n // BLOCK) for n in seq_lens]
    kv_cache = torch.zeros(sum(blocks_each) + 2, 1, BLOCK, 2 * DIM, dtype=dtype)
    order = torch.randperm(kv_cache.shape[0], generator=gen)
    table = torch.zeros(4, max(blocks_each), dtype=torch.int32)
    slots, used = [], 0
    for row, count in enumerate(blocks_each):
        table[row, :count] = order[used:used + count]
        used += count
        slots += [int(table[row, t // BLOCK]) * BLOCK + t % BLOCK for t in range(seq_lens[row])]
    isa = _get_attn_isa(dtype, BLOCK, DIM)
    key = torch.randn(len(slots), 1, DIM, generator=gen).to(dtype)
    value = torch.randn(len(slots), 1, DIM, generator=gen).to(dtype)
    view = kv_cache.view(kv_cache.shape[0], 1, 2 * BLOCK, DIM)
    vllm_ops.cpu_attn_reshape_and_cache(key, value, *view.chunk(2, dim=2),
                                        torch.tensor(slots), isa, k_scale=1.0, v_scale=1.0,
                                        kv_cache_dtype="auto")
    query_start_loc = torch.tensor([0, 1, 2, 22, 23], dtype=torch.int32)
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    scheduler = vllm_ops.cpu_attn_get_scheduler_metadata(
        num_reqs=4, num_heads=HEADS, num_kv_heads=1, head_dim=DIM, seq_lens=lens,
        dtype=dtype, query_start_loc=query_start_loc, causal=True, sliding_window_size=-1,
        isa=isa, enable_kv_split=False, kv_cache_dtype="auto")
    md = CPUAttentionMetadata(
        num_actual_tokens=23, max_query_len=20, query_start_loc=query_start_loc,
        max_seq_len=101, seq_lens=lens, block_table=table, slot_mapping=torch.zeros(23),
        scheduler_metadata=scheduler)
    query = torch.randn(23, HEADS, DIM, generator=gen).to(dtype)
    layer = types.SimpleNamespace(isa=isa, _k_scale_float=1.0, _v_scale_float=1.0)
    return query, kv_cache, md, layer


def make_impl(heads: int, kv_heads: int, dtype=torch.float32):
    """longserve's CPU impl as vLLM builds it for a layer (the config it reads: the dtype)."""
    from vllm.config import VllmConfig, set_current_vllm_config

    from attention_backends.sparse.cpu import SparseCPUImpl

    config = VllmConfig()
    config.model_config = types.SimpleNamespace(dtype=dtype)
    with set_current_vllm_config(config):
        return SparseCPUImpl(heads, DIM, DIM ** -0.5, kv_heads, None, None, "auto")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_route_matches_vllms_kernel(monkeypatch, dtype):
    from attention_backends import mfa
    from attention_backends.mfa import cpu as route

    query, kv_cache, md, layer = batch(dtype)
    # the route reads the "vec" kernels' layout (keys dimension-major); where vLLM picks
    # AMX for bf16 (CPUs with AMX-BF16) the cache is tiled and the route stands aside
    routed = 3 if layer.isa == "vec" else 0
    outputs, counts = {}, {}
    for mode in ("off", "auto"):
        monkeypatch.setenv(mfa.ENV, mode)
        impl = make_impl(HEADS, 1, dtype)
        before = route.MFA_STATS.counts["shared_kv"]["tokens"]
        out = torch.zeros_like(query)
        new = torch.zeros(23, 1, DIM, dtype=dtype)  # this step's K/V: already in the cache
        impl.forward(layer, query, new, new, kv_cache, md, out)
        outputs[mode] = out.float()
        counts[mode] = route.MFA_STATS.counts["shared_kv"]["tokens"] - before
        md.__dict__.pop("_shared_kv_split", None)
    assert bool((outputs["off"].abs().sum(dim=(1, 2)) > 0).all())  # every token written
    assert counts == {"off": 0, "auto": routed}  # the three decode rows took the route
    tol = (1e-5 if dtype == torch.float32 else 2e-2) if routed else 0
    torch.testing.assert_close(outputs["auto"], outputs["off"], atol=tol, rtol=tol)
    # the prefill chunk went through vLLM's kernel in both: identical
    assert torch.equal(outputs["auto"][2:22], outputs["off"][2:22])


def test_narrow_layers_keep_vllms_kernel(monkeypatch):
    from attention_backends import mfa

    _, kv_cache, _, layer = batch(torch.float32)
    monkeypatch.setenv(mfa.ENV, "auto")
    narrow, grouped = make_impl(8, 1), make_impl(HEADS, 2)  # 8 x 256 wide; 2 KV heads
    assert not narrow._routes(layer, kv_cache)
    assert not grouped._routes(layer, kv_cache)
    monkeypatch.setenv(mfa.ENV, "on")
    forced = make_impl(8, 1)
    assert forced._routes(layer, kv_cache)


def test_bad_mode_is_refused(monkeypatch):
    from attention_backends import mfa
    from server.engine import export_policy_env
    from server.settings import Settings

    monkeypatch.setenv(mfa.ENV, "fast")
    with pytest.raises(ValueError, match="LONGSERVE_MFA_DECODE"):
        mfa.mode()
    with pytest.raises(ValueError, match="LONGSERVE_MFA_DECODE"):  # at start-up
        export_policy_env(Settings())
