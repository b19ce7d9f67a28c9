"""The CPU backend's block reader/writer against vLLM's own CPU cache writer."""

from __future__ import annotations

import pytest
import torch

from attention_backends.policy_aware import cpu as policy_cpu
from attention_backends.policy_aware.cpu import PolicyAwareCPUImpl


class _Layer:  # what vLLM's CPU cache writer reads off an attention layer
    _k_scale_float = 1.0
    _v_scale_float = 1.0

    def __init__(self, dtype, block_size, head_size):
        from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

        self.isa = _get_attn_isa(dtype, block_size, head_size)


def impl(head_size):
    out = object.__new__(PolicyAwareCPUImpl)
    out.head_size, out.kv_cache_dtype, out.attn_type = head_size, "auto", "decoder"
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_reads_what_the_kernel_wrote_and_round_trips_writes(dtype):
    blocks, heads, block_size, dim = 6, 3, 32, 64
    layer, cpu = _Layer(dtype, block_size, dim), impl(dim)
    cache = torch.zeros(blocks, heads, block_size, 2 * dim, dtype=dtype)
    keys = torch.randn(3 * block_size, heads, dim).to(dtype)
    values = torch.randn(3 * block_size, heads, dim).to(dtype)
    table = [4, 1, 3]
    slots = torch.cat([torch.arange(b * block_size, (b + 1) * block_size) for b in table])
    cpu.do_kv_cache_update(layer, keys, values, cache, slots)  # vLLM's own writer

    k, v = cpu.read_blocks(layer, cache, torch.tensor(table), 80)
    assert torch.equal(k, keys[:80].transpose(0, 1)) and torch.equal(v, values[:80].transpose(0, 1))

    k2, v2 = torch.randn(heads, 2 * block_size, dim).to(dtype), torch.randn(heads, 2 * block_size, dim).to(dtype)
    cpu.write_blocks(layer, cache, torch.tensor([0, 5]), k2, v2)
    k3, v3 = cpu.read_blocks(layer, cache, torch.tensor([0, 5]), 2 * block_size)
    assert torch.equal(k3, k2) and torch.equal(v3, v2)
    again, _ = cpu.read_blocks(layer, cache, torch.tensor(table), 80)  # others untouched
    assert torch.equal(again, k)


def test_vec_reads_by_view_equal_the_general_gather(monkeypatch):
    """fp32 caches use the vec tiling on every CPU: the strided read equals the gather
    through the kernel's layout, at a length inside the last block."""
    dtype, heads, block_size, dim = torch.float32, 2, 128, 64
    layer, cpu = _Layer(dtype, block_size, dim), impl(dim)
    cache = torch.randn(5, heads, block_size, 2 * dim, dtype=dtype)
    blocks = torch.tensor([3, 0, 4])
    assert cpu._layout(layer, cache)[2]
    fast = cpu.read_blocks(layer, cache, blocks, 300)
    key = next(k for k in policy_cpu._LAYOUTS if k[0] == dtype and k[1] == block_size)
    codes, inverse, _ = policy_cpu._LAYOUTS[key]
    monkeypatch.setitem(policy_cpu._LAYOUTS, key, (codes, inverse, False))
    slow = cpu.read_blocks(layer, cache, blocks, 300)
    assert all(torch.equal(a, b) for a, b in zip(fast, slow))
