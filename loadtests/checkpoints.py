"""Randomly initialised checkpoints of the model families longserve serves beside the
default model, written as a Hugging Face directory (config.json + safetensors + SmolLM2's
tokenizer files) for `longserve serve --model DIR`: the tests compare the served model
with a plain PyTorch forward of the same weights, the decode-cost benchmark
(`loadtests.decode_cost`) times them.

- `minimax`: Hugging Face's MiniMax format (lightning and softmax layers, MoE), built by
  transformers' own `MiniMaxForCausalLM` and saved in the original MiniMax layout.
- `step3`: Step-3's text model (`Step3TextForCausalLM`: MFA attention, i.e. a shared
  low-rank query projection expanded to many heads over one KV head; a dense first layer
  and MoE layers with a shared expert), in Step-3's checkpoint layout.

Weights are N(0, std) for matrices and 1 + N(0, 0.1) for norms (not all ones, so a
norm applied in the wrong place shows).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

MINIMAX_LAYERS = ("linear_attention", "linear_attention", "linear_attention",
                  "full_attention")
VOCAB = 49152  # SmolLM2's tokenizer


def tokenizer_files(out: Path) -> None:
    from server.model_store import prepare

    for f in prepare()[0].iterdir():  # SmolLM2's tokenizer and chat template
        if f.name.startswith("tokenizer") or f.name == "chat_template.jinja":
            shutil.copy(f, out / f.name)


def _randomize(named: dict[str, torch.Tensor], std: float, gen: torch.Generator) -> None:
    with torch.no_grad():
        for _, tensor in sorted(named.items()):
            if tensor.dim() >= 2:
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * std)
            else:
                tensor.copy_(1 + 0.1 * torch.randn(tensor.shape, generator=gen))


def minimax(out: Path, *, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
            head_dim: int = 32, layers: tuple[str, ...] = MINIMAX_LAYERS, block: int = 32,
            experts: int = 4, intermediate: int = 128, max_len: int = 4096,
            std: float = 0.08, seed: int = 0) -> Path:
    from transformers import MiniMaxConfig, MiniMaxForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    tokenizer_files(out)
    config = MiniMaxConfig(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=len(layers), num_attention_heads=heads,
        num_key_value_heads=kv_heads, head_dim=head_dim, max_position_embeddings=max_len,
        num_local_experts=experts, num_experts_per_tok=2, block_size=block,
        layer_types=list(layers), bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
        dtype="float32")
    model = MiniMaxForCausalLM(config).eval()
    _randomize(dict(model.named_parameters()), std, torch.Generator().manual_seed(seed))
    model.save_pretrained(out, safe_serialization=True)
    return out


def step3_config(*, hidden: int = 256, heads: int = 64, head_dim: int = 256,
                 share_q_dim: int = 128, layers: int = 3, experts: int = 4, top_k: int = 2,
                 intermediate: int = 256, moe_intermediate: int = 64,
                 share_expert_dim: int = 64, max_len: int = 4096,
                 rope_theta: float = 10000.0) -> dict:
    """Step-3's config.json fields (model_type `step3_text`); layer 0 dense, the rest MoE."""
    return {
        "architectures": ["Step3TextForCausalLM"], "model_type": "step3_text",
        "hidden_size": hidden, "intermediate_size": intermediate,
        "num_attention_heads": heads, "num_attention_groups": 1,
        "num_hidden_layers": layers, "max_seq_len": max_len,
        "max_position_embedding": max_len, "vocab_size": VOCAB, "rms_norm_eps": 1e-5,
        "moe_intermediate_size": moe_intermediate, "moe_num_experts": experts,
        "moe_top_k": top_k, "rope_theta": rope_theta, "share_expert_dim": share_expert_dim,
        "share_q_dim": share_q_dim, "head_dim": head_dim, "norm_expert_weight": True,
        "moe_layers_enum": ",".join(str(i) for i in range(1, layers)),
        "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }


def step3_shapes(c: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Step-3 text checkpoint, by its on-disk name."""
    h, d, heads, sq = c["hidden_size"], c["head_dim"], c["num_attention_heads"], c["share_q_dim"]
    shapes = {"model.embed_tokens.weight": (VOCAB, h), "model.norm.weight": (h,),
              "lm_head.weight": (VOCAB, h)}
    moe_layers = {int(i) for i in c["moe_layers_enum"].split(",") if i}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                   p + "self_attn.q_proj.weight": (sq, h), p + "self_attn.k_proj.weight": (d, h),
                   p + "self_attn.v_proj.weight": (d, h), p + "self_attn.inter_norm.weight": (sq,),
                   p + "self_attn.wq.weight": (heads * d, sq),
                   p + "self_attn.o_proj.weight": (h, heads * d)}
        if i in moe_layers:
            e, mi, se = c["moe_num_experts"], c["moe_intermediate_size"], c["share_expert_dim"]
            shapes |= {p + "moe.gate.weight": (e, h), p + "moe.gate_proj.weight": (e, mi, h),
                       p + "moe.up_proj.weight": (e, mi, h), p + "moe.down_proj.weight": (e, h, mi),
                       p + "share_expert.gate_proj.weight": (se, h),
                       p + "share_expert.up_proj.weight": (se, h),
                       p + "share_expert.down_proj.weight": (h, se)}
        else:
            mi = c["intermediate_size"]
            shapes |= {p + "mlp.gate_proj.weight": (mi, h), p + "mlp.up_proj.weight": (mi, h),
                       p + "mlp.down_proj.weight": (h, mi)}
    return shapes


def step3(out: Path, *, std: float = 0.1, seed: int = 0, **config) -> Path:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tokenizer_files(out)
    c = step3_config(**config)
    weights = {name: torch.empty(shape) for name, shape in step3_shapes(c).items()}
    _randomize(weights, std, torch.Generator().manual_seed(seed))
    (out / "config.json").write_text(json.dumps(c, indent=2))
    save_file(weights, str(out / "model.safetensors"))
    return out
