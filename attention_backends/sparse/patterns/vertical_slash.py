"""Vertical-slash: the attention of the chunk's last queries shows which key positions
everyone reads (vertical lines) and which distances matter (slash lines); the top lines
are kept (MInference, arXiv:2407.02490; Qwen2.5-1M, arXiv:2501.15383).

A key block scores by the vertical mass it holds plus the slash mass whose offsets reach
it from the query block (slash lines become the blocks they cross). With `columns` > 0 the
top vertical positions are also attended one by one (kernels that take columns: Triton).
"""

from __future__ import annotations

import torch

from attention_backends.sparse.patterns.base import PatternEstimator, pool, query_blocks


def last_query_attention(q: torch.Tensor, k: torch.Tensor, q_offset: int, last: int,
                         scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of the last `last` queries over all keys, causal: (heads, last,
    n_keys) fp32, and the queries' positions (last,). One matmul per KV head for its whole
    group of query heads, in the model's dtype (an estimate); the softmax runs in fp32."""
    last = min(last, q.shape[0])
    n_keys, kv_heads, dim = k.shape
    heads = q.shape[1]
    positions = q_offset + torch.arange(q.shape[0] - last, q.shape[0], device=q.device)
    grouped = q[-last:].view(last, kv_heads, heads // kv_heads, dim).permute(1, 2, 0, 3)
    keys = k.transpose(0, 1).contiguous()  # (kv_heads, n_keys, dim)
    scores = grouped.reshape(kv_heads, -1, dim) @ keys.transpose(1, 2)  # (kv, group*last, n)
    scores = scores.view(heads, last, n_keys).float().mul_(scale)
    corner = scores[:, :, n_keys - last:]  # only the last queries' own keys can be future
    corner.masked_fill_(torch.ones(last, last, dtype=torch.bool, device=q.device).triu(1),
                        float("-inf"))
    return scores.softmax(-1), positions


class VerticalSlash(PatternEstimator):
    def scores(self, q, k, q_offset, scale):
        probs, positions = last_query_attention(q, k, q_offset, self.config.last_q, scale)
        heads, _, n_keys = probs.shape
        device = probs.device
        vertical = probs.sum(1)  # (heads, n_keys)
        columns = vertical.topk(min(self.config.columns, n_keys), dim=1).indices
        offsets = (positions[:, None] - torch.arange(n_keys, device=device)[None, :]).clamp(min=0)
        slash = torch.zeros(heads, n_keys, device=device).scatter_add_(
            1, offsets.flatten().expand(heads, -1), probs.flatten(1))  # mass per distance
        cumulative = torch.nn.functional.pad(slash.cumsum(1), (1, 0))  # [o] = sum below o
        block = self.config.block
        first, last = (t.to(device) for t in query_blocks(q_offset, q.shape[0], block))
        key_start = torch.arange(-(-n_keys // block), device=device) * block  # (key_blocks,)
        # the offsets from a query of the block to a key of key block b
        low = (first[:, None] - key_start[None, :] - block + 1).clamp(0, n_keys)
        high = (last[:, None] - key_start[None, :] + 1).clamp(0, n_keys)
        slash_mass = cumulative[:, high] - cumulative[:, low]  # (heads, q_blocks, key_blocks)
        vertical_mass = pool(vertical[..., None], block)[..., 0] * block  # (heads, key_blocks)
        return slash_mass + vertical_mass[:, None, :], columns
