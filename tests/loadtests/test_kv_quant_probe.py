"""The KV quantization probe's pieces (loadtests/kv_quant_probe.py): its byte count is the
server's packed format's, its rotation is undone exactly, and only whole groups change."""

from __future__ import annotations

import argparse

import pytest
import torch

from cache_policies.compress.kivi import PackedFormat
from loadtests.kv_quant_probe import (
    GROUP, Variant, bytes_per_entry, hadamard, parse_variant, quantized,
)


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_bytes_per_entry_is_the_packed_formats(bits):
    assert bytes_per_entry(bits, bits, 64) == PackedFormat(bits, 64).bits_per_entry() / 8
    # codes plus an fp16 scale and minimum per key channel per group and per value token
    assert bytes_per_entry(4, 3, 64) == pytest.approx((4 / 8 + 4 / GROUP + 3 / 8 + 4 / 64) / 2)


def test_variant_names():
    assert parse_variant("k4v3h") == Variant(4, 3, hadamard=True)
    assert parse_variant("k8v8") == Variant(8, 8)
    assert parse_variant("k4v3ps") == Variant(4, 3, pre_rope=True, sinks=True)
    for bad in ("k4", "k0v4", "k4v9", "k4v4x", "k4v4pp"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_variant(bad)


def test_rotation_is_orthonormal_and_the_tail_stays_exact():
    h = hadamard(64)
    torch.testing.assert_close(h @ h.T, torch.eye(64), atol=1e-6, rtol=0)
    gen = torch.Generator().manual_seed(0)
    keys = torch.randn(1, 2, GROUP * 2 + 40, 64, generator=gen)
    keys[..., 5] *= 30  # an outlier channel
    values = torch.randn(1, 2, GROUP * 2 + 40, 64, generator=gen)
    for rotate in (False, True):
        k, v = quantized(keys, values, Variant(8, 8, hadamard=rotate))
        assert torch.equal(k[:, :, 2 * GROUP:], keys[:, :, 2 * GROUP:])  # the partial group
        assert torch.equal(v[:, :, 2 * GROUP:], values[:, :, 2 * GROUP:])
        torch.testing.assert_close(k, keys, atol=0.5, rtol=0)  # half a step: range / 255 / 2
        torch.testing.assert_close(v, values, atol=0.05, rtol=0)
    # values quantize per token: the rotation spreads a token's outlier over its channels
    values[..., 7] *= 30
    errors = {rotate: (quantized(keys, values, Variant(4, 4, rotate))[1] - values)[:, :, :2 * GROUP]
              .pow(2).mean().item() for rotate in (False, True)}
    assert errors[True] < errors[False]


def test_pre_rope_keys_quantize_the_unrotated_channels_and_sinks_stay_exact():
    """Keys whose channels are constant before RoPE (one value per channel) come back
    back when quantized pre-RoPE (each channel's range is a point: only the fp16 minimum
    rounds) and far off at 2 bits after it; with `s` the first group is left alone."""
    from cache_policies.compress.cskv import rope_tables, rotate

    length, dim, theta = 2 * GROUP + 10, 64, 1e4
    raw = torch.linspace(-3, 3, dim).expand(1, 2, length, dim)
    cos, sin = rope_tables(0, length, dim, theta)
    keys, values = rotate(raw, cos, sin), torch.zeros(1, 2, length, dim)
    post, _ = quantized(keys, values, Variant(2, 2), theta)
    pre, _ = quantized(keys, values, Variant(2, 2, pre_rope=True), theta)
    assert (pre - keys).abs().max() < 2e-3 and (post - keys).abs().max() > 0.1
    sinks, _ = quantized(keys, values, Variant(2, 2, sinks=True), theta)
    assert torch.equal(sinks[:, :, :GROUP], keys[:, :, :GROUP])
    assert torch.equal(sinks[:, :, GROUP:2 * GROUP], post[:, :, GROUP:2 * GROUP])
