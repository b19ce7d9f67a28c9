"""`longserve calibrate cskv`: the bases CSKV stores keys and values in.

For every layer and KV head, the keys (before RoPE) and values the model computes on
calibration text are summarized by their first and second moments. Two bases of `rank`
columns are derived:
  - `svd`: the leading left singular vectors of the head's slice of the K/V projection
    weight (what the weights alone say; the paper's initialization), and
  - `pca`: the leading eigenvectors of the covariance of the head's keys / values on the
    calibration text, around their mean: the minimiser of the layer-wise reconstruction
    error E|x - m - (x - m) B B^T|^2 over rank-`rank` bases (Eckart-Young), i.e. the
    paper's refinement solved in closed form rather than by gradient steps.
The artifact holds the `pca` bases; the relative reconstruction error of both, on the
calibration text and on held-out text, is written to its `cskv.json`.

The calibration text is generated: the documentation of Python's standard library
(pydoc's plain-text rendering), English prose and code that ships with every Python and
overlaps nothing the benchmarks use.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from cache_policies.compress.cskv import rope_parameters, save

logger = logging.getLogger(__name__)

CORPUS_MODULES = (
    "argparse", "asyncio", "collections", "contextlib", "csv", "dataclasses", "datetime",
    "decimal", "email.message", "enum", "fractions", "functools", "http.client",
    "itertools", "json", "logging", "pathlib", "random", "re", "shutil", "socket",
    "sqlite3", "statistics", "string", "subprocess", "tarfile", "textwrap", "threading",
    "typing", "unittest", "urllib.parse", "zipfile",
)


def corpus() -> str:
    import importlib
    import pydoc

    parts = []
    for name in CORPUS_MODULES:
        parts.append(pydoc.render_doc(importlib.import_module(name), renderer=pydoc.plaintext))
    return "\n\n".join(parts)


class Moments:
    """Running sums of x and x x^T per (layer, head), float64."""

    def __init__(self, layers: int, heads: int, dim: int) -> None:
        self.count = 0
        self.sum = torch.zeros(layers, heads, dim, dtype=torch.float64)
        self.outer = torch.zeros(layers, heads, dim, dim, dtype=torch.float64)

    def add(self, layer: int, x: torch.Tensor) -> None:
        """x (tokens, heads, dim)."""
        x = x.double()
        if layer == 0:
            self.count += x.shape[0]
        self.sum[layer] += x.sum(0)
        self.outer[layer] += torch.einsum("thd,the->hde", x, x)

    def mean(self) -> torch.Tensor:
        return self.sum / self.count

    def second(self) -> torch.Tensor:
        return self.outer / self.count

    def covariance(self) -> torch.Tensor:
        m = self.mean()
        return self.second() - m.unsqueeze(-1) * m.unsqueeze(-2)


def pca_basis(cov: torch.Tensor, rank: int) -> torch.Tensor:
    """Leading eigenvectors (..., dim, rank) of symmetric (..., dim, dim)."""
    _, vectors = torch.linalg.eigh(cov)  # ascending
    return vectors[..., -rank:].flip(-1)


def weight_basis(weight: torch.Tensor, heads: int, rank: int) -> torch.Tensor:
    """weight (heads * dim, hidden) of a K or V projection -> per head the leading left
    singular vectors (heads, dim, rank)."""
    per_head = weight.double().view(heads, -1, weight.shape[-1])
    u, _, _ = torch.linalg.svd(per_head, full_matrices=False)
    return u[..., :rank]


def relative_error(m: Moments, basis: torch.Tensor, mean: torch.Tensor | None) -> torch.Tensor:
    """E|x - x_hat|^2 / E|x|^2 per layer (averaged over heads), x_hat = mean + (x - mean)
    B B^T (mean None: x B B^T)."""
    second, mu = m.second(), m.mean()
    b = basis.double()
    if mean is None:
        center = second
    else:  # E (x-m)(x-m)^T
        c = mu - mean.double()
        center = m.covariance() + c.unsqueeze(-1) * c.unsqueeze(-2)
    kept = torch.einsum("lhdr,lhde,lher->lh", b, center, b)
    total = torch.diagonal(second, dim1=-2, dim2=-1).sum(-1)
    lost = torch.diagonal(center, dim1=-2, dim2=-1).sum(-1) - kept
    return (lost / total).mean(-1)


def calibrate(model_dir: Path, out: Path, rank: int, value_rank: int | None = None,
              tokens: int = 16384, seq_len: int = 1024, held_out: float = 0.2,
              threads: int | None = None) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    config = AutoConfig.from_pretrained(model_dir)
    rope = rope_parameters(config)
    if config.model_type not in ("llama", "mistral", "qwen2") or rope.get("rope_type") != "default":
        raise ValueError(f"CSKV calibrates Llama-family models with the default RoPE; "
                         f"{model_dir} is {config.model_type!r} with {rope}")
    heads, layers = config.num_key_value_heads, config.num_hidden_layers
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    ranks = {"key": rank, "value": value_rank or rank}
    for kind, r in ranks.items():
        if not 0 < r <= dim or r % 8:
            raise ValueError(f"{kind} rank {r}: a multiple of 8 up to head_dim ({dim})")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer(corpus(), return_tensors="pt").input_ids[0]
    if ids.numel() < tokens:
        raise ValueError(f"the calibration corpus has {ids.numel()} tokens, fewer than {tokens}")
    sequences = ids[: tokens // seq_len * seq_len].view(-1, seq_len)
    if len(sequences) < 2:
        raise ValueError(f"{tokens} tokens make {len(sequences)} sequence(s) of {seq_len}; "
                         "at least two are needed (one is held out)")
    split = min(len(sequences) - 1, max(1, round(len(sequences) * (1 - held_out))))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    fit = {k: Moments(layers, heads, dim) for k in ("key", "value")}
    check = {k: Moments(layers, heads, dim) for k in ("key", "value")}
    current: dict = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        for kind, proj in (("key", layer.self_attn.k_proj), ("value", layer.self_attn.v_proj)):
            def hook(module, args, output, i=i, kind=kind):
                current[kind].add(i, output.reshape(-1, heads, dim))
            hooks.append(proj.register_forward_hook(hook))
    started = time.monotonic()
    with torch.inference_mode():
        for n, seq in enumerate(sequences):
            current.update(fit if n < split else check)
            model(seq.unsqueeze(0))
    for h in hooks:
        h.remove()
    bases, record = {}, {}
    for kind, proj in (("key", "k_proj"), ("value", "v_proj")):
        m = fit[kind]
        r = ranks[kind]
        pca = pca_basis(m.covariance(), r)
        svd = torch.stack([weight_basis(getattr(layer.self_attn, proj).weight.detach(), heads, r)
                           for layer in model.model.layers])
        bases[f"{kind}_basis"], bases[f"{kind}_mean"] = pca.float(), m.mean().float()
        record[kind] = {
            name: {"calibration": relative_error(m, b, mean).tolist(),
                   "held_out": relative_error(check[kind], b, mean).tolist()}
            for name, b, mean in (("svd", svd, None), ("pca", pca, m.mean()))}
    meta = {
        "model": str(model_dir), "key_rank": ranks["key"], "value_rank": ranks["value"],
        "head_dim": dim, "kv_heads": heads,
        "layers": layers, "rope_theta": float(rope["rope_theta"]),
        "calibration": {"corpus": "pydoc plain text of " + ", ".join(CORPUS_MODULES),
                        "tokens": split * seq_len,
                        "held_out_tokens": (len(sequences) - split) * seq_len,
                        "seq_len": seq_len, "seconds": round(time.monotonic() - started, 1)},
        "relative_error": record,
    }
    save(out, bases, meta)
    return meta


def summary(meta: dict) -> str:
    lines = [f"CSKV ranks {meta['key_rank']} (keys), {meta['value_rank']} (values) of "
             f"{meta['head_dim']} "
             f"({meta['calibration']['tokens']} calibration tokens, "
             f"{meta['calibration']['held_out_tokens']} held out); relative reconstruction "
             "error, mean over layers (held out):"]
    for kind, by_basis in meta["relative_error"].items():
        parts = [f"{name} {sum(e['held_out']) / len(e['held_out']):.4f}"
                 for name, e in by_basis.items()]
        lines.append(f"  {kind}s: " + ", ".join(parts))
    return "\n".join(lines)
