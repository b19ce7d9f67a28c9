"""Page selection from attention estimated on a 4-bit shadow copy of the keys.

Quest's bound (`quest.py`) ranks a page by the largest logit any key inside its channel
box could give, and on the default model that box is loose: at a quarter of the pages
Quest keeps about half of the full cache's score, while ranking the same pages by the
attention they really receive keeps all of it (BENCHMARKS.md, issue 5 section 2b). This
policy estimates that attention cheaply. Each page of 16 keys is quantized per channel
over the page (KIVI's key rule: 4-bit codes, fp16 scale and minimum), once per full block,
into a shadow kept in the worker's memory beside the cache; each decode step computes every
key's logit from the shadow, takes the softmax per query head over the candidates, and
ranks the pages by the attention they receive, summed over the query heads sharing the KV
head. Attention itself then runs on the exact keys and values of the pages chosen, as for
Quest. Estimating attention from a cheap copy of the keys is the idea of SparQ (a few
channels), Loki (low-rank keys) and InfiniGen; the copy here is KIVI's quantization.

The shadow holds 48 bytes per entry and KV head at head_dim 64 (32 of codes, 16 of scale
and minimum), against the 256 bytes of bf16 keys and values (Quest's fp32 page minimum
and maximum: 32). It never leaves the worker, so offloaded blocks are ranked without being
read back.
"""

from __future__ import annotations

import torch

from cache_policies.compress.kivi import dequantize, pack_codes, quantize, unpack_codes
from cache_policies.retrieve.quest import BlockRetriever

BITS = 4


def key_shadow(keys: torch.Tensor, page: int, bits: int = BITS) -> torch.Tensor:
    """keys (kv_heads, n * page, dim) -> (n, kv_heads, bytes) uint8: per page and head the
    packed codes of its keys, quantized per channel over the page, then the fp16 scale and
    minimum of each channel."""
    heads, length, dim = keys.shape
    pages = keys.float().view(heads, length // page, page, dim).transpose(0, 1)
    codes, scale, minimum = quantize(pages, bits, dim=2)  # scale, minimum: (n, h, 1, dim)
    packed = pack_codes(codes.flatten(2), bits)
    extras = torch.cat([scale, minimum], dim=2).flatten(2).view(torch.uint8)
    return torch.cat([packed, extras], dim=2)


def shadow_keys(shadow: torch.Tensor, page: int, bits: int = BITS) -> torch.Tensor:
    """(n, kv_heads, bytes) -> the dequantized keys (kv_heads, n * page, dim), fp32."""
    n, heads, nbytes = shadow.shape
    dim = nbytes * 8 // (page * bits + 32)
    split = page * dim * bits // 8
    codes = unpack_codes(shadow[..., :split], bits).view(n, heads, page, dim)
    extras = shadow[..., split:].contiguous().view(torch.float16).view(n, heads, 2, dim)
    keys = dequantize(codes, extras[:, :, :1], extras[:, :, 1:])
    return keys.transpose(0, 1).reshape(heads, n * page, dim)


def page_shares(logits: torch.Tensor, page: int) -> torch.Tensor:
    """logits (kv_heads, group, n * page), scaled -> (kv_heads, n): the attention each
    page receives (softmax per query head), summed over the query heads of each KV head."""
    kv_heads, _, length = logits.shape
    return logits.softmax(-1).sum(1).view(kv_heads, length // page, page).sum(-1)


def page_attention(query: torch.Tensor, keys: torch.Tensor, scale: float,
                   page: int) -> torch.Tensor:
    """query (heads, dim), keys (kv_heads, n * page, dim) -> (kv_heads, n): `page_shares`
    of the exact logits of these keys."""
    kv_heads, _, dim = keys.shape
    q = query.float().view(kv_heads, -1, dim)
    return page_shares(torch.einsum("hgd,hld->hgl", q, keys.float()) * scale, page)


class Shadow4(BlockRetriever):
    name = "shadow4"
    bits = BITS

    def summarize(self, keys: torch.Tensor) -> torch.Tensor:
        return key_shadow(keys, self.page, self.bits)

    def scores(self, queries, summaries, scale):
        return page_attention(queries[:, -1], shadow_keys(summaries, self.page, self.bits),
                              scale, self.page)
