"""Offline probe of KV quantization variants before building one into the engine: the
default model on the Hugging Face side (float32), each prompt prefilled once, then its
whole 128-token groups of KV quantized and dequantized with the server's own KIVI rule
(`cache_policies.compress.kivi`: keys per channel over a group, values per token) and
greedy decoding continued from that cache; the prompt's last partial group stays exact,
as the block being written does in the engine. A variant names the key and value bits and
flags: `h`, each head's channels first rotated by an orthonormal Hadamard matrix (QuaRot's
idea: the rotation spreads outlier channels, so a per-token or per-channel range wastes
fewer codes), undone after dequantizing; `p`, keys quantized before RoPE (KVQuant's
pre-RoPE keys: RoPE turns each channel pair by a position-dependent angle, which mixes
the channels a per-channel range is fitted to; the keys are un-rotated with their
positions, as CSKV does, and rotated again after); `s`, the first group (the attention
sinks) kept exact, as IntactKV argues; `r`, at least the last group's worth of entries
kept exact (KIVI's residual window of recent tokens: the question and the answer's
prefix stay in full precision instead of only the prompt's partial group). Reported
against the full cache on the same prompts: identical outputs, token agreement, the task
score, and the KV bytes per entry against bf16's 2 (scales and minimums included).

    python -m loadtests.kv_quant_probe --tasks niah_multikey,niah_multivalue \\
        --length 2048 --samples 16 --variants k4v4,k4v4h,k4v3,k4v3p,k4v3ps

This is a screen, not the harness: the engine packs at the end of prefill and again as
blocks fill during decode, which this does not; `bench policies` measures what is served.
"""

from __future__ import annotations

import argparse
import math
import re
from typing import NamedTuple

GROUP = 128  # tokens per key-scale group, as the server's KIVI


class Variant(NamedTuple):
    key_bits: int
    value_bits: int
    hadamard: bool = False
    pre_rope: bool = False
    sinks: bool = False
    residual: bool = False


def parse_variant(text: str) -> Variant:
    """"k4v3hp" -> Variant(4, 3, hadamard=True, pre_rope=True): key bits, value bits, flags
    h (Hadamard rotation), p (pre-RoPE keys), s (the sink group exact), r (a residual
    window of at least one group exact), each at most once."""
    match = re.fullmatch(r"k(\d+)v(\d+)([hpsr]*)", text)
    if (not match or not all(1 <= int(b) <= 8 for b in match.groups()[:2])
            or len(set(match[3])) != len(match[3])):
        raise argparse.ArgumentTypeError(f"{text!r}: expected k<bits>v<bits>[h][p][s][r], "
                                         "bits 1-8")
    return Variant(int(match[1]), int(match[2]), *(flag in match[3] for flag in "hpsr"))


def bytes_per_entry(key_bits: int, value_bits: int, head_dim: int) -> float:
    """KV bytes per element in the server's packed format (scales included)."""
    from cache_policies.compress.kivi import PackedFormat

    return PackedFormat(key_bits, head_dim, GROUP, value_bits=value_bits).bits_per_entry() / 8


def hadamard(n: int):
    import torch

    assert n & (n - 1) == 0, "a power of two"
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


def quantized(keys, values, variant: Variant, rope_theta: float = 1e4):
    """keys (RoPE applied), values (batch, heads, length, dim) with their whole groups
    quantized and dequantized (the first kept exact with `sinks`); the tail shorter than a
    group unchanged (with `residual`, the last `GROUP` entries at least)."""
    from cache_policies.compress.cskv import rope_tables, rotate
    from cache_policies.compress.kivi import dequantize, quantize

    batch, heads, length, dim = keys.shape
    first = GROUP if variant.sinks else 0
    whole = (length - GROUP * variant.residual) // GROUP * GROUP
    if whole <= first:
        return keys, values
    k, v = keys[:, :, first:whole], values[:, :, first:whole]
    if variant.pre_rope:
        cos, sin = rope_tables(first, whole - first, dim, rope_theta)
        k = rotate(k, cos, -sin)
    rotation = hadamard(dim) if variant.hadamard else None
    if variant.hadamard:
        k, v = k @ rotation, v @ rotation
    shape = (batch, heads, (whole - first) // GROUP, GROUP, dim)
    k = dequantize(*quantize(k.reshape(shape), variant.key_bits, dim=3)).reshape(k.shape)
    v = dequantize(*quantize(v.reshape(shape), variant.value_bits, dim=4)).reshape(v.shape)
    if variant.hadamard:
        k, v = k @ rotation.T, v @ rotation.T
    if variant.pre_rope:
        k = rotate(k, cos, sin)
    keys, values = keys.clone(), values.clone()
    keys[:, :, first:whole], values[:, :, first:whole] = k, v
    return keys, values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.kv_quant_probe",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="niah_multikey,niah_multivalue")
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--samples", type=int, default=16, help="in all, tasks in turn")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--variants", default="k4v4,k4v3,k4v3p,k4v3ps")
    args = parser.parse_args(argv)
    variants = {name: parse_variant(name) for name in args.variants.split(",")}

    from cache_policies.compress.cskv import rope_parameters
    from loadtests.probe_common import compare, greedy, load_model

    tokenizer, model = load_model()
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    theta = rope_parameters(model.config)["rope_theta"]

    def decode(name, ids, tokens):
        def edit(cache):
            for layer in cache.layers:
                layer.keys, layer.values = quantized(layer.keys, layer.values,
                                                     variants[name], theta)

        return greedy(model, ids, tokens, None if name is None else edit)

    rows = compare(tokenizer, args.tasks.split(","), args.length, args.samples, args.seed,
                   list(variants), decode)
    print(f"\n{args.samples} samples of {args.tasks} at {args.length} tokens, seed "
          f"{args.seed}\n")
    print("| variant | bytes/entry | fewer than bf16 | score | of full | identical | "
          "token agreement |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, row in rows.items():
        size = 2.0 if name == "full" else bytes_per_entry(*variants[name][:2], head_dim)
        # (`s` adds one group in bf16 per request: not in this per-entry count)
        print(f"| {name} | {size:.3f} | {2 / size:.2f}x | {row['score']:.1f} | "
              f"{row['of_full']} | {row['identical']} | {row['agreement']} |")


if __name__ == "__main__":
    main()
