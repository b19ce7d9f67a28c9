"""What every policy-aware impl adds on top of the platform kernel it subclasses."""

from __future__ import annotations

import torch


class PolicyAwareImplMixin:
    """Put first in the bases of a platform impl; `forward` then runs through here.

    Counts the forward calls that carry attention metadata (warm-up passes carry none),
    per process and across layers, so a running engine can show this is the backend in
    use. Under full CUDA graphs replayed steps do not re-enter Python and are not counted.
    """

    forward_calls = 0

    def forward(
        self,
        layer: torch.nn.Module,
        query: torch.Tensor,  # (tokens, heads, head_dim)
        key: torch.Tensor,  # (tokens, kv_heads, head_dim)
        value: torch.Tensor,  # (tokens, kv_heads, head_dim)
        kv_cache: torch.Tensor,  # platform layout, e.g. CPU (blocks, kv_heads, block, 2*head_dim)
        attn_metadata,
        output: torch.Tensor,  # (tokens, heads * head_dim)
        output_scale: torch.Tensor | None = None,
        output_block_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if attn_metadata is not None:
            PolicyAwareImplMixin.forward_calls += 1
        return super().forward(  # type: ignore[misc]
            layer, query, key, value, kv_cache, attn_metadata, output,
            output_scale, output_block_scale,
        )
