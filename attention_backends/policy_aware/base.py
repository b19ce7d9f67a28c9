"""What every policy-aware impl and metadata builder adds on top of the platform kernel."""

from __future__ import annotations

import torch

from cache_policies.runtime import RUNTIME


class PolicyAwareImplMixin:
    """Put first in the bases of a platform impl; `forward` then runs through here.

    After the platform kernel has attended (with this step's keys and values already in
    the cache), requests under a KV policy get their policy run on this layer (see
    `cache_policies.runtime`). The platform impl supplies `read_blocks`/`write_blocks`
    for its cache layout.

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
        output: torch.Tensor,  # (tokens, heads, head_dim)
        output_scale: torch.Tensor | None = None,
        output_block_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if attn_metadata is not None:
            PolicyAwareImplMixin.forward_calls += 1
        result = self.attend(layer, query, key, value, kv_cache, attn_metadata, output,
                             output_scale, output_block_scale)
        if attn_metadata is not None and RUNTIME.rows:
            RUNTIME.after_attention(self, layer, query, kv_cache, attn_metadata, output)
        return result

    def attend(self, layer, query, key, value, kv_cache, attn_metadata, output,
               output_scale=None, output_block_scale=None) -> torch.Tensor:
        """The attention itself: the platform kernel's; a subclass may route some
        requests elsewhere (sparse prefill)."""
        return super().forward(  # type: ignore[misc]
            layer, query, key, value, kv_cache, attn_metadata, output,
            output_scale, output_block_scale,
        )

    def read_blocks(self, layer, kv_cache: torch.Tensor, blocks: torch.Tensor,
                    length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `length` entries held by `blocks` (in order): keys and values,
        each (kv_heads, length, head_dim)."""
        raise NotImplementedError

    def read_raw(self, layer, kv_cache: torch.Tensor, raw: torch.Tensor,
                 length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """As `read_blocks`, from blocks' storage copied out of the cache (`raw`, shaped
        like `kv_cache[blocks]`)."""
        raise NotImplementedError

    def write_blocks(self, layer, kv_cache: torch.Tensor, blocks: torch.Tensor,
                     keys: torch.Tensor, values: torch.Tensor) -> None:
        """Fill `blocks` (in order) with keys/values (kv_heads, len(blocks)*block, head_dim)."""
        raise NotImplementedError

    def read_stream(self, layer, kv_cache: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        """The raw bytes `blocks` hold, one stream per KV head: (kv_heads, n * bytes) uint8,
        each block contributing the same number of bytes per head."""
        raise NotImplementedError

    def write_stream(self, layer, kv_cache: torch.Tensor, blocks: torch.Tensor,
                     stream: torch.Tensor) -> None:
        """The inverse of `read_stream`."""
        raise NotImplementedError


def attend_rows(attend, layer, query, key, value, kv_cache, md, tokens: torch.Tensor,
                output: torch.Tensor) -> None:
    """Run `attend` (an impl's `attend`, usually `super().attend`) on some of a batch's
    tokens with their own metadata (the platform's, built for those rows alone) and write
    the result into `output`."""
    part = torch.empty_like(output[tokens])
    attend(layer, query[tokens], key[tokens], value[tokens], kv_cache, md, part)
    output[tokens] = part


class PolicyAwareBuilderMixin:
    """Put first in the bases of a platform metadata builder: requests whose KV a policy
    compacted are shown to the kernel as their live blocks and live length."""

    def build(self, common_prefix_len: int, common_attn_metadata, fast_build: bool = False):
        common = RUNTIME.remap(common_attn_metadata, self.kv_cache_spec.block_size)  # type: ignore[attr-defined]
        return super().build(common_prefix_len, common, fast_build)  # type: ignore[misc]
