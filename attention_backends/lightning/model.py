"""`MiniMaxForCausalLM` for vLLM: Hugging Face's MiniMax format (config `model_type:
minimax`, `layer_types` of `linear_attention` / `full_attention`, or MiniMax's original
`attn_type_list` and `layernorm_*_alpha/beta` names), served by `longserve serve --model
DIR`; the plugin registers it under that architecture name.

Layers: RMSNorm, then lightning attention (attention_backends.lightning.layer) or softmax
attention with RoPE (vLLM's `Attention`: the platform backend and the paged KV cache),
with MiniMax's residual taken after the norm and scaled by the alpha/beta factors; then
a top-k softmax-routed mixture of SwiGLU experts. The experts run as a loop over the
experts a batch routes to (tensor parallelism 1); vLLM's fused MoE kernels are the next
step for large models.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import QKVParallelLinear, RowParallelLinear
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.mamba.mamba_utils import (
    MambaStateCopyFuncCalculator,
    MambaStateShapeCalculator,
)
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.layers.vocab_parallel_embedding import (
    ParallelLMHead,
    VocabParallelEmbedding,
)
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.interfaces import HasInnerState, IsHybrid
from vllm.model_executor.models.utils import maybe_prefix

from attention_backends.lightning.layer import LightningAttention


def layer_kinds(config) -> list[str]:
    """`linear_attention` / `full_attention` per layer. MiniMax's original configs give
    `attn_type_list` (0 lightning, 1 softmax); transformers then fills `layer_types` with
    its own alternating default, so the list wins when present."""
    types = getattr(config, "attn_type_list", None)
    if types:
        return ["full_attention" if int(t) == 1 else "linear_attention" for t in types]
    return list(config.layer_types)


def residual_factors(config, kind: str) -> tuple[float, float]:
    """(alpha, beta) of a residual branch (`linear_attn`, `full_attn` or `mlp`) under
    MiniMax's original names (`layernorm_*_alpha/beta`) when the config has them (they
    arrive as extra attributes beside transformers' defaults of 1), else transformers'."""
    original = {"linear_attn": "linear_attention", "full_attn": "full_attention",
                "mlp": "mlp"}[kind]
    return tuple(getattr(config, f"layernorm_{original}_{x}",
                         getattr(config, f"{kind}_{x}_factor", 1))
                 for x in ("alpha", "beta"))


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class SoftmaxAttention(nn.Module):
    def __init__(self, config, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        self.head_dim = _head_dim(config)
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim, self.num_heads,
                                          self.num_kv_heads, bias=False,
                                          prefix=f"{prefix}.qkv_proj")
        self.o_proj = RowParallelLinear(self.q_size, config.hidden_size, bias=False,
                                        prefix=f"{prefix}.o_proj")
        self.rotary_emb = get_rope(self.head_dim, max_position=config.max_position_embeddings,
                                   rope_parameters=config.rope_parameters, is_neox_style=True)
        self.attn = Attention(self.num_heads, self.head_dim, self.head_dim ** -0.5,
                              num_kv_heads=self.num_kv_heads,
                              cache_config=vllm_config.cache_config, prefix=f"{prefix}.attn")

    def forward(self, hidden_states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        qkv, _ = self.qkv_proj(hidden_states)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self.rotary_emb(positions, q, k)
        out, _ = self.o_proj(self.attn(q, k, v))
        return out


class Experts(nn.Module):
    """MiniMax's sparse MoE: softmax router, top-k, weights renormalized; expert weights
    in the checkpoint's fused layout (gate_up_proj (E, 2I, H), down_proj (E, H, I))."""

    def __init__(self, config) -> None:
        super().__init__()
        e, h, i = config.num_local_experts, config.hidden_size, config.intermediate_size
        self.top_k = config.num_experts_per_tok
        self.gate = nn.Parameter(torch.empty(e, h))
        self.gate_up_proj = nn.Parameter(torch.empty(e, 2 * i, h))
        self.down_proj = nn.Parameter(torch.empty(e, h, i))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(F.linear(x, self.gate).float(), dim=-1)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(x)
        for expert in chosen.unique().tolist():
            rows, slot = torch.where(chosen == expert)
            gate, up = F.linear(x[rows], self.gate_up_proj[expert]).chunk(2, dim=-1)
            y = F.linear(F.silu(gate) * up, self.down_proj[expert])
            out.index_add_(0, rows, (y * weights[rows, slot, None]).to(x.dtype))
        return out


class DecoderLayer(nn.Module):
    def __init__(self, config, vllm_config: VllmConfig, index: int, prefix: str) -> None:
        super().__init__()
        self.linear = layer_kinds(config)[index] == "linear_attention"
        self.attn_alpha, self.attn_beta = residual_factors(
            config, "linear_attn" if self.linear else "full_attn")
        self.mlp_alpha, self.mlp_beta = residual_factors(config, "mlp")
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        attn_prefix = f"{prefix}.self_attn"
        self.self_attn = (LightningAttention(config, vllm_config, attn_prefix) if self.linear
                          else SoftmaxAttention(config, vllm_config, attn_prefix))
        self.mlp = Experts(config)

    def forward(self, hidden_states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        residual = self.input_layernorm(hidden_states)  # MiniMax: the residual is normed
        if self.linear:
            attn = torch.empty_like(residual)
            self.self_attn(residual, attn, positions)
        else:
            attn = self.self_attn(residual, positions)
        hidden = residual * self.attn_alpha + attn * self.attn_beta
        residual = self.post_attention_layernorm(hidden)
        return residual * self.mlp_alpha + self.mlp(residual) * self.mlp_beta


class MiniMaxModel(nn.Module):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(config, vllm_config, i, f"{prefix}.layers.{i}")
            for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, input_ids, positions, inputs_embeds=None) -> torch.Tensor:
        hidden = inputs_embeds if inputs_embeds is not None else self.embed_tokens(input_ids)
        for layer in self.layers:
            hidden = layer(hidden, positions)
        return self.norm(hidden)


class MiniMaxForCausalLM(nn.Module, HasInnerState, IsHybrid):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        if vllm_config.parallel_config.tensor_parallel_size != 1:
            raise NotImplementedError("longserve's MiniMax runs with --tensor-parallel-size 1")
        self.config = config
        self.model = MiniMaxModel(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"))
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size,
                                      prefix=maybe_prefix(prefix, "lm_head"))
        if config.tie_word_embeddings:
            self.lm_head = self.lm_head.tie_weights(self.model.embed_tokens)
        self.logits_processor = LogitsProcessor(config.vocab_size)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None,
                **kwargs) -> torch.Tensor:
        return self.model(input_ids, positions, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.logits_processor(self.lm_head, hidden_states)

    @classmethod
    def get_mamba_state_shape_from_config(cls, vllm_config: VllmConfig):
        config = vllm_config.model_config.hf_config
        return MambaStateShapeCalculator.linear_attention_state_shape(
            num_heads=config.num_attention_heads,
            tp_size=vllm_config.parallel_config.tensor_parallel_size,
            head_dim=_head_dim(config))

    @classmethod
    def get_mamba_state_dtype_from_config(cls, vllm_config: VllmConfig):
        return (torch.float32,)

    @classmethod
    def get_mamba_state_copy_func(cls):
        return MambaStateCopyFuncCalculator.linear_attention_state_copy_func()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """MiniMax's on-disk names: per-expert `block_sparse_moe.experts.E.w1/w3/w2`
        (gate, up, down) and `block_sparse_moe.gate`; q/k/v into the fused projection."""
        params = dict(self.named_parameters())
        renames = {".block_sparse_moe.gate.weight": ".mlp.gate"}
        shards = {".q_proj.": "q", ".k_proj.": "k", ".v_proj.": "v"}
        expert = re.compile(r"(.*)\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight$")
        loaded = set()
        for name, tensor in weights:
            for old, new in renames.items():
                name = name.replace(old, new)
            if match := expert.match(name):
                layer, index, which = match[1], int(match[2]), match[3]
                name = f"{layer}.mlp.{'down_proj' if which == 'w2' else 'gate_up_proj'}"
                rows = params[name].shape[1] // 2
                part = {"w1": slice(0, rows), "w3": slice(rows, None), "w2": slice(None)}[which]
                params[name].data[index, part].copy_(tensor)
                loaded.add(name)
                continue
            shard = next((s for key, s in shards.items() if key in name), None)
            if shard is not None:
                name = name.replace(f".{shard}_proj.", ".qkv_proj.")
                params[name].weight_loader(params[name], tensor, shard)
            elif name in params:
                param = params[name]
                getattr(param, "weight_loader", default_weight_loader)(param, tensor)
            else:
                continue  # buffers Hugging Face saves (decay tables): recomputed here
            loaded.add(name)
        if self.config.tie_word_embeddings:
            loaded.add("lm_head.weight")
        return loaded
