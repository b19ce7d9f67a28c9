"""The lightning attention layer as MiniMax checkpoints define it, on vLLM's state cache.

vLLM 0.32 keeps MiniMax's lightning kernels as GPU Triton code only and dropped the model.
This layer reuses vLLM's plumbing for recurrent state (`LinearAttention`: a `MambaSpec`
cache, one state slot per request, `LinearAttentionMetadata` with decodes first) and
computes with longserve's kernels: `kernels.lightning_attention.cpu` on CPU (block-wise
matmuls), `.triton` on CUDA. Prefill starts from the slot's state unless the request
starts here (no context yet), so chunked prefill continues where the last chunk stopped.

Semantics follow Hugging Face's `MiniMaxLightningAttention`: silu on the fused q/k/v
projection, per-head decay base^(h+1) scaled by the layer's depth, RMSNorm over the heads'
output, a sigmoid output gate from the layer input, the output projection.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from vllm.config import get_current_vllm_config
from vllm.forward_context import get_forward_context
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import ColumnParallelLinear, RowParallelLinear
from vllm.model_executor.layers.mamba.linear.base import LinearAttention
from vllm.platforms import current_platform

from kernels.lightning_attention import cpu as cpu_kernels

# registers torch.ops.vllm.linear_attention, the op that calls a layer's `_forward` by name
import vllm.model_executor.layers.mamba.linear.minimax_linear_attn  # noqa: E402, F401, I001


def slope_rates(num_heads: int, layer_idx: int, num_layers: int) -> torch.Tensor:
    """Hugging Face MiniMax's decay rates for one layer (float32, (num_heads,))."""
    base = 1 / (2 ** (8 / num_heads))
    exponent = torch.arange(num_heads, dtype=torch.float32) + 1
    factor = 1 - layer_idx / (num_layers - 1 + 1e-5) + 1e-5
    return (base ** exponent) * factor


class LightningAttention(LinearAttention):
    def __init__(self, config, vllm_config, prefix: str) -> None:
        super().__init__(config, vllm_config, prefix)
        if self.tp_size != 1:
            raise NotImplementedError("lightning attention runs without tensor parallelism "
                                      "for now (--tensor-parallel-size 1)")
        self.BLOCK = getattr(config, "block_size", 256)
        inner = self.hidden_inner_size
        self.qkv_proj = ColumnParallelLinear(self.hidden_size, inner * 3, bias=False,
                                             prefix=f"{prefix}.qkv_proj")
        self.output_gate = ColumnParallelLinear(self.hidden_size, inner, bias=False,
                                                prefix=f"{prefix}.output_gate")
        self.out_proj = RowParallelLinear(inner, self.hidden_size, bias=False,
                                          prefix=f"{prefix}.out_proj")
        self.norm = RMSNorm(inner, eps=1e-6)  # MiniMaxRMSNorm's default eps
        self.register_buffer("slopes", slope_rates(self.num_heads, self.layer_idx,
                                                   self.num_hidden_layers), persistent=False)
        context = get_current_vllm_config().compilation_config.static_forward_context
        if prefix in context:
            raise ValueError(f"Duplicate layer name: {prefix}")
        context[prefix] = self
        self.kernels = cpu_kernels
        if current_platform.is_cuda_alike():
            from kernels.lightning_attention import triton as triton_kernels

            self.kernels = triton_kernels

    def get_state_dtype(self) -> tuple[torch.dtype]:
        return (torch.float32,)  # the sums decay over thousands of tokens: keep them exact

    def forward(self, hidden_states: torch.Tensor, output: torch.Tensor,
                positions: torch.Tensor) -> None:
        # vLLM's op finds this layer by name and calls `_forward` (outside graph capture)
        torch.ops.vllm.linear_attention(hidden_states, output, positions, self.prefix)

    def _forward(self, hidden_states: torch.Tensor, output: torch.Tensor,
                 positions: torch.Tensor) -> None:
        metadata = get_forward_context().attn_metadata
        metadata = metadata.get(self.prefix) if isinstance(metadata, dict) else None
        if metadata is None:  # profiling run: shapes only
            output.zero_()
            return
        tokens = metadata.num_prefill_tokens + metadata.num_decode_tokens
        x = hidden_states[:tokens]
        qkv, _ = self.qkv_proj(x)
        qkv = F.silu(qkv).view(tokens, self.num_heads, 3 * self.head_dim)
        q, k, v = qkv.split(self.head_dim, dim=-1)
        hidden = self._attend(q.contiguous(), k.contiguous(), v.contiguous(), metadata)
        hidden = self.norm(hidden.reshape(tokens, self.hidden_inner_size))
        gate, _ = self.output_gate(x)
        out, _ = self.out_proj(torch.sigmoid(gate) * hidden)
        output[:tokens] = out

    def _attend(self, q, k, v, metadata) -> torch.Tensor:
        """Decodes first (one token each), then prefills, as vLLM orders the batch."""
        states = self.kv_cache[0]
        slots = metadata.state_indices_tensor
        decodes, decode_tokens = metadata.num_decodes, metadata.num_decode_tokens
        out = torch.empty_like(q)
        if decodes:
            first = metadata.seq_lens[:decodes] == 1  # a one-token prompt is a "decode" too
            if bool(first.any()):
                states[slots[:decodes][first].long()] = 0
            out[:decode_tokens] = self.kernels.decode(
                q[:decode_tokens], k[:decode_tokens], v[:decode_tokens], self.slopes,
                states, slots[:decodes])
        if metadata.num_prefills:
            starts = metadata.query_start_loc[decodes:]
            query_lens = starts[1:] - starts[:-1]
            fresh = (metadata.seq_lens[decodes:] - query_lens) == 0
            lo = decode_tokens
            out[lo:] = self.kernels.prefill(
                q[lo:], k[lo:], v[lo:], self.slopes, starts - starts[0], states,
                slots[decodes:], fresh, block=self.BLOCK)
        return out
