"""KIVI: the KV cache quantized to 8, 4 or 2 bits, keys per channel and values per token
(Liu et al., 2024), packed into vLLM's own blocks so that the memory really goes back.
Keys and values may have their own width: `kivi4v3` keeps 4-bit keys and 3-bit values
(values, quantized per token, lose less at 3 bits than keys do: BENCHMARKS issue 5, 1c).

Quantization is asymmetric (scale and minimum, both stored as fp16) in groups of
`GROUP` tokens, the size of one vLLM block on CPU:
  keys:   per channel over the group's tokens (the outlier channels of keys keep their
          own range, which is why KIVI quantizes keys this way),
  values: per token over its channels.
The newest entries stay in full precision in vLLM's layout (KIVI's residual window): a
block is packed once it is full and at least `residual` newer entries follow it, so the
request's last 128 to 255 entries — the question and the answer's prefix, at the end of
a prompt — are never quantized.

One group of one KV head packs into `group_bytes` bytes: key codes, value codes, key
scale/min per channel, value scale/min per token. The groups of a request form one byte
stream per KV head, laid over its packed blocks (a packed block holds the same number of
bytes per head as a full-precision block holds entries' worth of bf16), so at 4 bits a
block of 128 full-precision entries becomes 3.66 groups' worth of packed space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from cache_policies.base import KVPolicy

GROUP = 128
_SCALE_DTYPE = torch.float16


@dataclass(frozen=True)
class PackedFormat:
    """bits 1-8: quantized with scales; 16: stored as bf16 (CSKV's unquantized features).
    `bits` is the keys' width, `value_bits` the values' (default: the same). `head_dim` is
    the channels stored per key, `value_dim` per value (default: the same)."""

    bits: int
    head_dim: int
    group: int = GROUP
    value_dim: int | None = None
    value_bits: int | None = None

    def __post_init__(self) -> None:
        if 16 in (self.bits, self.v_bits) and self.bits != self.v_bits:
            raise ValueError("bf16 features are stored for keys and values together")
        for bits, channels in ((self.bits, self.head_dim), (self.v_bits, self.value_channels)):
            if bits != 16 and (self.group * channels) % _word(bits)[0]:
                raise ValueError(f"{self.group} x {channels} codes of {bits} bits do not fill "
                                 "whole bytes")

    @property
    def value_channels(self) -> int:
        return self.value_dim or self.head_dim

    @property
    def v_bits(self) -> int:
        return self.value_bits or self.bits

    @property
    def key_bytes(self) -> int:  # key codes of one group of one head
        return self.group * self.head_dim * self.bits // 8

    @property
    def value_bytes(self) -> int:
        return self.group * self.value_channels * self.v_bits // 8

    @property
    def group_bytes(self) -> int:
        codes = self.key_bytes + self.value_bytes
        if self.bits == 16:
            return codes
        scale = torch.finfo(_SCALE_DTYPE).bits // 8
        return codes + 2 * scale * (self.head_dim + self.group)

    def bits_per_entry(self, head_dim: int | None = None) -> float:
        """Stored bits per key or value element of a `head_dim`-channel entry (default: the
        stored channels), scales included."""
        dim = head_dim or (self.head_dim + self.value_channels) / 2
        return 8 * self.group_bytes / (2 * self.group * dim)

    def blocks_for(self, groups: int, block_bytes: int) -> int:
        """Packed blocks holding `groups` groups, `block_bytes` bytes per head per block."""
        return -(-groups * self.group_bytes // block_bytes)


def quantize(x: torch.Tensor, bits: int, dim: int):
    """Asymmetric quantization along `dim`: (codes uint8, scale, minimum), the last two
    fp16 with `dim` kept as size 1; x == codes * scale + minimum up to scale / 2."""
    top = 2**bits - 1
    minimum = x.amin(dim, keepdim=True).to(_SCALE_DTYPE)
    scale = ((x.amax(dim, keepdim=True) - minimum.float()) / top).to(_SCALE_DTYPE)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # constant runs
    codes = ((x.float() - minimum.float()) / scale.float()).round_().clamp_(0, top)
    return codes.to(torch.uint8), scale, minimum


def dequantize(codes: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor) -> torch.Tensor:
    return torch.addcmul(minimum.float(), codes.float(), scale.float())


def _word(bits: int) -> tuple[int, int]:
    """Codes are packed in little-endian words of lcm(bits, 8) bits: (codes, bytes) per
    word; (8 // bits, 1) for 1, 2, 4 and 8 bits, (8, 3) for 3 bits."""
    word = math.lcm(bits, 8)
    return word // bits, word // 8


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(..., n) codes < 2**bits -> (..., n * bits / 8) bytes, first code in the low bits."""
    per_word, nbytes = _word(bits)
    grouped = codes.view(*codes.shape[:-1], -1, per_word).to(torch.int64)
    words = (grouped << (torch.arange(per_word) * bits)).sum(-1, keepdim=True)
    return ((words >> (torch.arange(nbytes) * 8)) & 255).to(torch.uint8).flatten(-2)


def unpack_codes(packed: torch.Tensor, bits: int) -> torch.Tensor:
    if bits == 8:
        return packed
    mask = 2**bits - 1
    per_word, nbytes = _word(bits)
    if nbytes == 1:
        parts = [(packed >> (i * bits)) & mask for i in range(per_word)]  # uint8 ops
        return torch.stack(parts, dim=-1).flatten(-2)
    grouped = packed.view(*packed.shape[:-1], -1, nbytes).to(torch.int64)
    words = (grouped << (torch.arange(nbytes) * 8)).sum(-1, keepdim=True)
    return ((words >> (torch.arange(per_word) * bits)) & mask).to(torch.uint8).flatten(-2)


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8).flatten(-2)


def pack_groups(keys: torch.Tensor, values: torch.Tensor, fmt: PackedFormat) -> torch.Tensor:
    """keys, values (heads, groups * group, head_dim) -> (heads, groups, group_bytes)."""
    heads, length, dim = keys.shape
    groups = length // fmt.group
    if fmt.bits == 16:
        return torch.cat([_bytes(t.to(torch.bfloat16).reshape(heads, groups, fmt.group, -1))
                          for t in (keys, values)], dim=-1)
    k = keys.reshape(heads, groups, fmt.group, dim)
    v = values.reshape(heads, groups, fmt.group, values.shape[-1])
    k_codes, k_scale, k_min = quantize(k, fmt.bits, dim=2)  # per channel: over tokens
    v_codes, v_scale, v_min = quantize(v, fmt.v_bits, dim=3)  # per token: over channels
    parts = [pack_codes(k_codes.flatten(-2), fmt.bits),
             pack_codes(v_codes.flatten(-2), fmt.v_bits),
             _bytes(k_scale), _bytes(k_min), _bytes(v_scale), _bytes(v_min)]
    return torch.cat(parts, dim=-1)


def unpack_groups(packed: torch.Tensor, fmt: PackedFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """(heads, groups, group_bytes) -> keys, values (heads, groups * group, head_dim), fp32."""
    heads, groups, _ = packed.shape
    g, dim, vdim = fmt.group, fmt.head_dim, fmt.value_channels
    codes = [fmt.key_bytes, fmt.value_bytes]
    if fmt.bits == 16:
        k, v = (b.contiguous().view(torch.bfloat16).float().view(heads, groups * g, -1)
                for b in packed.split(codes, dim=-1))
        return k, v
    sizes = codes + [torch.finfo(_SCALE_DTYPE).bits // 8 * n for n in (dim, dim, g, g)]
    k_codes, v_codes, k_scale, k_min, v_scale, v_min = packed.split(sizes, dim=-1)

    def floats(b, shape):
        return b.contiguous().view(_SCALE_DTYPE).view(heads, groups, *shape)

    keys = dequantize(unpack_codes(k_codes, fmt.bits).view(heads, groups, g, dim),
                      floats(k_scale, (1, dim)), floats(k_min, (1, dim)))
    values = dequantize(unpack_codes(v_codes, fmt.v_bits).view(heads, groups, g, vdim),
                        floats(v_scale, (g, 1)), floats(v_min, (g, 1)))
    return keys.view(heads, -1, dim), values.view(heads, -1, vdim)


class KIVI(KVPolicy):
    """Keeps every entry, quantized. Subclasses fix the bit width."""

    takes_budget = False
    packs: ClassVar[bool] = True
    bits: ClassVar[int]
    value_bits: ClassVar[int | None] = None  # None: as the keys
    residual: ClassVar[int] = GROUP  # the newest entries kept in full precision, at least

    @classmethod
    def format(cls, head_dim: int, group: int = GROUP) -> PackedFormat:
        return PackedFormat(cls.bits, head_dim, group, value_bits=cls.value_bits)

    def pack(self, keys, values, fmt: PackedFormat, layer: int, first: int) -> torch.Tensor:
        """Entries (kv_heads, groups * group, head_dim) of `layer` at positions first.. ->
        (kv_heads, groups, group_bytes)."""
        return pack_groups(keys, values, fmt)

    def unpack(self, packed, fmt: PackedFormat, layer: int, first: int):
        """The inverse of `pack`: keys, values (kv_heads, groups * group, head_dim), fp32."""
        return unpack_groups(packed, fmt)


class KIVI8(KIVI):
    name = "kivi8"
    bits = 8


class KIVI4(KIVI):
    name = "kivi4"
    bits = 4


class KIVI4V3(KIVI):
    name = "kivi4v3"
    bits = 4
    value_bits = 3


class KIVI2(KIVI):
    name = "kivi2"
    bits = 2
