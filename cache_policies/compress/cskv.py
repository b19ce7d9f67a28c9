"""CSKV (Wang et al., 2024, https://arxiv.org/abs/2409.10593): keys and values stored as
low-rank channel features, the newest entries in full precision (the bi-branch cache).

Per layer and KV head, a calibrated basis B (head_dim x rank; keys and values have their
own rank: keys are far more compressible) and mean m: an entry x is
stored as f = (x - m) B and read back as m + f B^T. Keys are projected before RoPE (the
cache holds rotated keys: they are un-rotated with their positions, projected, and rotated
again when read), so one basis serves every position. The bases come from
`longserve calibrate cskv` (`cache_policies.compress.cskv_calibrate`): the SVD of the K/V
projection weights, refined to the minimiser of the layer-wise reconstruction error on
calibration text (the principal components of the layer's keys and values there).

Features are packed into vLLM's blocks exactly as KIVI packs entries (`kivi.pack_groups`,
with the ranks as the channels): in bf16 (`cskv`) or quantized (`cskv8`,
`cskv4`: CSKV combined with KIVI's per-channel / per-token quantization). The blocks being
written stay in vLLM's layout (the full-precision branch) until a whole group is older.

The server loads one artifact (`--cskv DIR`, exported to the engine as `LONGSERVE_CSKV`);
the policies are refused (400) when none is loaded.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from cache_policies.compress.kivi import KIVI, PackedFormat, pack_groups, unpack_groups

ENV = "LONGSERVE_CSKV"
WEIGHTS, META = "cskv.safetensors", "cskv.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Artifact:
    """Per-layer bases (layers, kv_heads, head_dim, rank) and means (layers, kv_heads,
    head_dim) for keys and values, and the RoPE the keys were un-rotated with."""

    path: str
    meta: dict
    key_basis: torch.Tensor
    key_mean: torch.Tensor
    value_basis: torch.Tensor
    value_mean: torch.Tensor

    @property
    def ranks(self) -> tuple[int, int]:
        """Channels stored per key and per value."""
        return self.key_basis.shape[-1], self.value_basis.shape[-1]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(layers, kv_heads, head_dim) of the model it was calibrated on."""
        return tuple(self.key_basis.shape[:3])

    def check_model(self, layers: int, kv_heads: int, head_dim: int) -> None:
        if self.shape != (layers, kv_heads, head_dim):
            raise ValueError(
                f"CSKV artifact {self.path} was calibrated on a model with (layers, KV heads, "
                f"head_dim) = {self.shape}, the served model has {(layers, kv_heads, head_dim)}: "
                "run longserve calibrate cskv on the served model")

    def features(self, layer: int, keys: torch.Tensor, values: torch.Tensor,
                 first: int) -> tuple[torch.Tensor, torch.Tensor]:
        """keys (RoPE applied) and values (kv_heads, n, head_dim) at positions first.. ->
        their features (kv_heads, n, key rank) and (kv_heads, n, value rank), fp32."""
        cos, sin = rope_tables(first, keys.shape[1], self.head_dim, self.meta["rope_theta"])
        k = rotate(keys.float(), cos, -sin) - self.key_mean[layer].unsqueeze(1)
        v = values.float() - self.value_mean[layer].unsqueeze(1)
        return k @ self.key_basis[layer], v @ self.value_basis[layer]

    def entries(self, layer: int, key_features: torch.Tensor, value_features: torch.Tensor,
                first: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The inverse of `features`: keys (RoPE applied again) and values, fp32."""
        keys = key_features.float() @ self.key_basis[layer].transpose(1, 2)
        keys += self.key_mean[layer].unsqueeze(1)
        values = value_features.float() @ self.value_basis[layer].transpose(1, 2)
        values += self.value_mean[layer].unsqueeze(1)
        cos, sin = rope_tables(first, keys.shape[1], self.head_dim, self.meta["rope_theta"])
        return rotate(keys, cos, sin), values

    @property
    def head_dim(self) -> int:
        return self.key_basis.shape[2]


def rope_parameters(config) -> dict:
    """A Hugging Face config's RoPE settings (`rope_parameters` in transformers 5, the
    older `rope_theta` otherwise)."""
    return getattr(config, "rope_parameters", None) or {
        "rope_type": "default", "rope_theta": getattr(config, "rope_theta", 10000.0)}


def rope_tables(first: int, count: int, dim: int, theta: float):
    """cos, sin (count, dim / 2) of positions first..first+count-1 (the default RoPE),
    computed in fp32 as vLLM computes its table, so un-rotating undoes vLLM's rotation."""
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)
    angles = torch.arange(first, first + count, dtype=torch.float).unsqueeze(1) * inv_freq
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE in the NeoX layout (halves of the head rotate together), as vLLM applies it to
    Llama-family keys; with -sin it undoes the rotation. x (..., n, dim) fp32."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def save(path: Path, bases: dict[str, torch.Tensor], meta: dict) -> None:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in bases.items()}, str(path / WEIGHTS))
    (path / META).write_text(json.dumps({"format_version": FORMAT_VERSION, **meta}, indent=2))


@functools.lru_cache(maxsize=4)
def load(path: str) -> Artifact:
    from safetensors.torch import load_file

    root = Path(path)
    try:
        meta = json.loads((root / META).read_text())
        tensors = load_file(str(root / WEIGHTS))
    except (OSError, ValueError) as exc:
        raise ValueError(f"CSKV artifact {path}: cannot read {META} and {WEIGHTS} ({exc}); "
                         "write one with longserve calibrate cskv") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"CSKV artifact {path}: format_version {meta.get('format_version')!r}, "
                         f"this longserve reads {FORMAT_VERSION}")
    names = ("key_basis", "key_mean", "value_basis", "value_mean")
    if set(tensors) != set(names):
        raise ValueError(f"CSKV artifact {path}: expected tensors {names}, got {sorted(tensors)}")
    art = Artifact(path, meta, *(tensors[n].float() for n in names))
    if art.value_basis.shape[:3] != art.key_basis.shape[:3] or any(r % 8 for r in art.ranks):
        raise ValueError(f"CSKV artifact {path}: key/value bases {tuple(art.key_basis.shape)} / "
                         f"{tuple(art.value_basis.shape)} (one shape but the rank; ranks "
                         "multiples of 8)")
    return art


def loaded() -> Artifact:
    """The server's artifact (`--cskv`)."""
    path = os.environ.get(ENV)
    if not path:
        raise ValueError("kv_policy 'cskv*' needs the server started with --cskv DIR (an "
                         "artifact written by longserve calibrate cskv); this server has none")
    return load(path)


class CSKV(KIVI):
    """Keeps every entry as low-rank features. Subclasses set the features' bit width
    (16: bf16, no quantization)."""

    bits: ClassVar[int] = 16

    @classmethod
    def validate(cls, config) -> None:
        super().validate(config)
        loaded()

    @classmethod
    def format(cls, head_dim: int, group: int) -> PackedFormat:
        key_rank, value_rank = loaded().ranks
        return PackedFormat(cls.bits, key_rank, group, value_rank)

    def pack(self, keys, values, fmt: PackedFormat, layer: int, first: int) -> torch.Tensor:
        _check_layer(layer)
        k, v = loaded().features(layer, keys, values, first)
        return pack_groups(k, v, fmt)

    def unpack(self, packed, fmt: PackedFormat, layer: int, first: int):
        _check_layer(layer)
        k, v = unpack_groups(packed, fmt)
        return loaded().entries(layer, k, v, first)


def _check_layer(layer: int) -> None:
    """The bases are per layer: a layer the runtime could not name (-1) must not silently
    read the last layer's."""
    if layer < 0:
        raise RuntimeError("CSKV: the attention layer's decoder index is unknown "
                           "(vLLM layer names of the form '...layers.N....' are expected)")


class CSKV16(CSKV):
    name = "cskv"
    bits = 16


class CSKV8(CSKV):
    name = "cskv8"
    bits = 8


class CSKV4(CSKV):
    name = "cskv4"
    bits = 4
