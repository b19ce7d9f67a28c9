"""A plain PyTorch forward of a Step-3 text checkpoint (what `loadtests.checkpoints.step3`
writes), written from the model's definition: no vLLM, no KV cache, the whole sequence
recomputed for every generated token.

Per layer: h += o_proj(MFA(rmsnorm(h))), then h += FFN(rmsnorm(h)), where MFA is
  q = wq(rmsnorm(q_proj(x)))   (a shared low-rank query, expanded to H heads)
  k = k_proj(x), v = v_proj(x) (one KV head, shared by all H query heads)
with rotary embeddings (rotate-half form) on q and k and causal softmax attention; the FFN
is a SwiGLU MLP on dense layers, and on MoE layers a shared SwiGLU expert plus the top-k
of softmax-routed experts (weights renormalised when `norm_expert_weight`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rotate(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """x (n, ..., D): rotary embedding, rotate-half form."""
    dim = x.shape[-1]
    inv = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = (positions.double()[:, None] * inv[None]).float()  # (n, D/2)
    shape = (len(positions),) + (1,) * (x.dim() - 2) + (dim // 2,)
    cos, sin = angles.cos().view(shape), angles.sin().view(shape)
    x1, x2 = x[..., : dim // 2], x[..., dim // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def swiglu(x, gate, up, down):
    return F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)


class Step3Reference:
    def __init__(self, model_dir: Path) -> None:
        self.c = json.loads((Path(model_dir) / "config.json").read_text())
        self.w = load_file(str(Path(model_dir) / "model.safetensors"))
        self.moe_layers = {int(i) for i in self.c["moe_layers_enum"].split(",") if i}

    def attention(self, x: torch.Tensor, p: str, positions: torch.Tensor) -> torch.Tensor:
        w, c = self.w, self.c
        n, heads, dim = len(x), c["num_attention_heads"], c["head_dim"]
        q = rmsnorm(F.linear(x, w[p + "q_proj.weight"]), w[p + "inter_norm.weight"],
                    c["rms_norm_eps"])
        q = F.linear(q, w[p + "wq.weight"]).view(n, heads, dim)
        k, v = F.linear(x, w[p + "k_proj.weight"]), F.linear(x, w[p + "v_proj.weight"])
        q, k = rotate(q, positions, c["rope_theta"]), rotate(k, positions, c["rope_theta"])
        scores = torch.einsum("nhd,md->hnm", q, k) * dim ** -0.5
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        weights = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
        out = torch.einsum("hnm,md->nhd", weights, v).reshape(n, heads * dim)
        return F.linear(out, w[p + "o_proj.weight"])

    def ffn(self, x: torch.Tensor, p: str, layer: int) -> torch.Tensor:
        w = self.w
        if layer not in self.moe_layers:
            return swiglu(x, w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"],
                          w[p + "mlp.down_proj.weight"])
        out = swiglu(x, w[p + "share_expert.gate_proj.weight"],
                     w[p + "share_expert.up_proj.weight"], w[p + "share_expert.down_proj.weight"])
        probs = torch.softmax(F.linear(x, w[p + "moe.gate.weight"]), dim=-1)
        top, chosen = probs.topk(self.c["moe_top_k"], dim=-1)
        if self.c["norm_expert_weight"]:
            top = top / top.sum(-1, keepdim=True)
        for t in range(len(x)):
            for weight, e in zip(top[t], chosen[t].tolist()):
                out[t] += weight * swiglu(x[t], w[p + "moe.gate_proj.weight"][e],
                                          w[p + "moe.up_proj.weight"][e],
                                          w[p + "moe.down_proj.weight"][e])
        return out

    @torch.no_grad()
    def logits(self, tokens: list[int]) -> torch.Tensor:
        """(len(tokens), vocab) float32."""
        w, c, eps = self.w, self.c, self.c["rms_norm_eps"]
        positions = torch.arange(len(tokens))
        h = w["model.embed_tokens.weight"][torch.tensor(tokens)]
        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}."
            h = h + self.attention(rmsnorm(h, w[p + "input_layernorm.weight"], eps),
                                   p + "self_attn.", positions)
            h = h + self.ffn(rmsnorm(h, w[p + "post_attention_layernorm.weight"], eps), p, i)
        return F.linear(rmsnorm(h, w["model.norm.weight"], eps), w["lm_head.weight"])

    def greedy(self, prompt: list[int], steps: int) -> tuple[list[int], list[float]]:
        tokens, logprobs = list(prompt), []
        for _ in range(steps):
            last = torch.log_softmax(self.logits(tokens)[-1], dim=-1)
            tokens.append(int(last.argmax()))
            logprobs.append(float(last[tokens[-1]]))
        return tokens[len(prompt):], logprobs
