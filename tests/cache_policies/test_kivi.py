"""KIVI quantization against the loop reference, and the packed byte format."""

from __future__ import annotations

import pytest
import torch

from cache_policies.compress.kivi import (
    PackedFormat, pack_codes, pack_groups, unpack_codes, unpack_groups,
)
from cache_policies.registry import make_config
from tests.cache_policies.reference import kivi_roundtrip


def kv(seed: int, heads=2, groups=2, group=16, dim=8):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(heads, groups * group, dim, generator=g)
    keys[:, :, 3] *= 25  # an outlier channel, as real keys have
    values = torch.randn(heads, groups * group, dim, generator=g)
    values[:, 5] = 0.5  # a constant token: zero range
    return keys, values


@pytest.mark.parametrize("bits,value_bits", [(8, None), (4, None), (2, None), (4, 3)],
                         ids=["8", "4", "2", "k4v3"])
@pytest.mark.parametrize("seed", [0, 1])
def test_pack_unpack_equals_the_paper_rule(bits, value_bits, seed):
    keys, values = kv(seed)
    fmt = PackedFormat(bits, head_dim=8, group=16, value_bits=value_bits)
    packed = pack_groups(keys, values, fmt)
    assert packed.dtype == torch.uint8 and packed.shape == (2, 2, fmt.group_bytes)
    got_k, got_v = unpack_groups(packed, fmt)
    ref_k, ref_v = kivi_roundtrip(keys, values, bits, 16, value_bits)
    torch.testing.assert_close(got_k, ref_k, rtol=0, atol=1e-3)
    torch.testing.assert_close(got_v, ref_v, rtol=0, atol=1e-3)


def test_error_shrinks_with_bits_and_keys_keep_their_outlier_channel():
    keys, values = kv(3)
    errors = []
    for bits in (2, 4, 8):
        k, v = unpack_groups(pack_groups(keys, values, PackedFormat(bits, 8, 16)),
                             PackedFormat(bits, 8, 16))
        errors.append(((k - keys).abs().mean(), (v - values).abs().mean()))
        # per channel: an ordinary channel's error follows its own range, not the outlier's
        ordinary = (k - keys)[:, :, 0].abs().max()
        assert ordinary <= (keys[:, :, 0].max() - keys[:, :, 0].min()) / (2**bits - 1)
    assert errors[0][0] > errors[1][0] > errors[2][0]
    assert errors[0][1] > errors[1][1] > errors[2][1]


@pytest.mark.parametrize("bits", [8, 4, 3, 2, 5])
def test_codes_pack_losslessly(bits):
    codes = torch.randint(0, 2**bits, (3, 64), dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.shape == (3, 64 * bits // 8)
    assert torch.equal(unpack_codes(packed, bits), codes)
    # the byte string: code i at bit i * bits of the row, little-endian
    number = sum(int(c) << (i * bits) for i, c in enumerate(codes[1]))
    assert bytes(packed[1].tolist()) == number.to_bytes(64 * bits // 8, "little")


def test_mixed_widths_take_their_bytes_and_odd_sizes_are_refused():
    fmt = PackedFormat(4, head_dim=64, group=128, value_bits=3)  # kivi4v3
    assert (fmt.key_bytes, fmt.value_bytes) == (4096, 3072)
    assert fmt.group_bytes == 4096 + 3072 + 2 * 2 * (64 + 128)
    assert 2 * 128 * 64 * 2 / fmt.group_bytes == pytest.approx(4.13, abs=0.01)  # vs bf16
    with pytest.raises(ValueError, match="whole bytes"):
        PackedFormat(4, head_dim=6, group=2, value_bits=3)  # 12 codes of 3 bits
    with pytest.raises(ValueError, match="bf16"):
        PackedFormat(16, head_dim=64, value_bits=4)


def test_bytes_per_entry_and_blocks_needed():
    fmt = PackedFormat(4, head_dim=64, group=128)  # SmolLM2's heads, vLLM's CPU blocks
    assert fmt.group_bytes == 2 * 128 * 64 // 2 + 2 * 2 * (64 + 128)
    assert fmt.bits_per_entry() == pytest.approx(4.375)
    block = 128 * 2 * 64 * 2  # one bf16 block, one head: keys and values
    assert fmt.blocks_for(12, block) == 4  # 12 groups = 12 full-precision blocks
    assert PackedFormat(8, 64).blocks_for(12, block) == 7
    assert PackedFormat(2, 64).blocks_for(12, block) == 2


def test_kivi_takes_no_budget():
    make_config("kivi4")
    with pytest.raises(ValueError, match="takes no budget"):
        make_config("kivi4", 0.5)


def test_chunkkv_kivi8_takes_a_budget_and_packs_as_kivi8():
    from cache_policies.compress.kivi import KIVI8
    from cache_policies.registry import policy_class

    cls = policy_class("chunkkv_kivi8")
    make_config("chunkkv_kivi8", 0.4)
    assert cls.packs and cls.format(64) == KIVI8.format(64) and cls.residual == KIVI8.residual
    keys, values = kv(0)
    policy = cls(make_config("chunkkv_kivi8"))
    fmt = cls.format(8, 16)
    assert torch.equal(policy.pack(keys, values, fmt, 0, 0), pack_groups(keys, values, fmt))
