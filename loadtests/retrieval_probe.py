"""Offline probe of decode-time page selection rules before building one into the engine:
the default model on the Hugging Face side (float32), each prompt prefilled densely, then
greedy decoding where every decode step's attention, per layer and KV head, sees only the
pages a rule selects within the budget, as the server's retrieval path does
(`cache_policies.runtime`): pages of 16 entries in 128-entry blocks; the first page
(sinks) and the two pages before the block being written always attended; the block being
written attended whole and counted in the budget; query heads sharing a KV head share its
pages. Reported against the full cache on the same prompts: identical outputs, token
agreement, the task score, and the share of pages attended.

A variant is `rule[-d<N>][-p<page>]`:
- `quest`: the server's Quest rule (`cache_policies.retrieve.quest`): per page, the upper
  bound of any key's logit from the pages' channel minimum and maximum;
- `oracle`: the attention each page really gets (summed over the query heads of the KV
  head) from the exact logits: no rule keeps more attention at a budget, so it says
  whether a budget is reachable at all;
- `shadow<bits>`: the server's `shadow4` rule (`cache_policies.retrieve.shadow`) at any
  width: that attention estimated from keys quantized per channel over each page;
- `sparq<r>`: that attention estimated from the r largest |q| channels (SparQ);
- `-d<N>`: the first N layers attend densely (Quest leaves its first two layers dense);
  the pages they attend count in the share;
- `-p<page>`: another page size.

    python -m loadtests.retrieval_probe --tasks niah_single,niah_multikey,niah_multivalue \\
        --length 2048 --samples 30 --budget 0.25 --variants quest,oracle,quest-d2

This is a screen, not the harness: `bench policies` measures what is served.
"""

from __future__ import annotations

import argparse
import re
from typing import NamedTuple

BLOCK = 128  # entries per vLLM block on CPU: the block being written is attended whole


class Rule(NamedTuple):
    kind: str
    dense_layers: int = 0
    page: int = 16


def parse_rule(text: str) -> Rule:
    match = re.fullmatch(r"(quest|oracle|shadow\d|sparq\d+)(?:-d(\d+))?(?:-p(\d+))?", text)
    if not match or (match[3] and BLOCK % int(match[3])):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected quest|oracle|shadow<bits>|sparq<channels>[-d<layers>]"
            f"[-p<page dividing {BLOCK}>]")
    return Rule(match[1], int(match[2] or 0), int(match[3] or 16))


def make_policy(rule: Rule, budget: float):
    """The server's policy for `rule` (`oracle` and `sparq` are probe-only subclasses of
    the same base), at `rule.page`: selection runs through the server's own `select`."""
    from cache_policies.base import KVPolicyConfig
    from cache_policies.retrieve.quest import BlockRetriever, Quest
    from cache_policies.retrieve.shadow import Shadow4, page_attention

    class Oracle(BlockRetriever):
        name = "oracle"

        def summarize(self, keys):  # the keys themselves, pages first
            heads, length, dim = keys.shape
            return keys.view(heads, length // self.page, self.page, dim).transpose(0, 1)

        def scores(self, queries, summaries, scale):
            keys = summaries.transpose(0, 1).flatten(1, 2)
            return page_attention(queries[:, -1], keys, scale, self.page)

    class SparQ(Oracle):
        name = "sparq"

        def scores(self, queries, summaries, scale):
            keys = summaries.transpose(0, 1).flatten(1, 2)
            return sparq_scores(queries[:, -1], keys, self.channels, self.page)

    kind, digits = re.fullmatch(r"([a-z]+)(\d*)", rule.kind).groups()
    base = {"quest": Quest, "oracle": Oracle, "shadow": Shadow4, "sparq": SparQ}[kind]
    width = {"shadow": "bits", "sparq": "channels"}.get(kind)
    extra = {width: int(digits)} if width else {}
    cls = type(base.__name__, (base,), {"page": rule.page, **extra})
    return cls(KVPolicyConfig(base.name, budget))


def page_mask(policy, query, keys, scale: float):
    """query (heads, dim) of one decode step, keys (kv_heads, L, dim) -> (kv_heads, L) bool:
    the entries each KV head attends to, chosen as `cache_policies.runtime` chooses them."""
    import torch

    kv_heads, length, dim = keys.shape
    page = policy.page
    full = (length - 1) // BLOCK * BLOCK  # entries in full blocks; the rest is being written
    candidates, tail_pages = full // page, -(-(length - full) // page)
    limit = policy.limit(candidates + tail_pages)
    mask = torch.ones(kv_heads, length, dtype=torch.bool)
    if limit >= candidates + tail_pages or candidates == 0:
        return mask
    chosen = policy.select(query.unsqueeze(1), policy.summarize(keys[:, :full]), scale,
                           limit - tail_pages, policy.recent_pages)
    mask[:, :full] = chosen.repeat_interleave(page, dim=1)
    return mask


def sparq_scores(query, keys, channels: int, page: int):
    """SparQ's estimate (Ribar et al., 2024): each query head's logits from its `channels`
    largest |q| channels only, at the temperature sqrt(dim * |q_r|_1 / |q|_1); the attention
    each page receives, summed over the query heads of the KV head."""
    import torch

    from cache_policies.retrieve.shadow import page_shares

    kv_heads, length, dim = keys.shape
    group = query.shape[0] // kv_heads
    q = query.float().view(kv_heads, group, dim)
    top = q.abs().topk(channels, dim=-1).indices  # (kv, group, r)
    k = keys.float().unsqueeze(1).expand(-1, group, -1, -1)
    k_r = k.gather(-1, top.unsqueeze(2).expand(-1, -1, length, -1))
    q_r = q.gather(-1, top)
    temperature = (dim * q_r.abs().sum(-1) / q.abs().sum(-1)).sqrt().unsqueeze(-1)
    return page_shares(torch.einsum("hgr,hglr->hgl", q_r, k_r) / temperature, page)


class Counter:
    def __init__(self):
        self.attended = self.held = 0


def install(rule: Rule, budget: float, counter: Counter) -> str:
    """Registers an attention function applying `rule` to decode steps; returns its name."""
    import torch
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    policy = make_policy(rule, budget)

    def attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
        if query.shape[2] != 1:  # prefill: dense
            return sdpa_attention_forward(module, query, key, value, attention_mask,
                                          scaling=scaling, **kwargs)
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        q, k, v = query[0, :, 0].float(), key[0].float(), value[0].float()
        kv_heads, length, dim = k.shape
        if module.layer_idx < rule.dense_layers:
            mask = torch.ones(kv_heads, length, dtype=torch.bool)
        else:
            mask = page_mask(policy, q, k, scale)
        counter.attended += int(mask.sum())
        counter.held += mask.numel()
        group = q.shape[0] // kv_heads
        logits = torch.einsum("hgd,hld->hgl", q.view(kv_heads, group, dim), k) * scale
        probs = logits.masked_fill(~mask.unsqueeze(1), float("-inf")).softmax(-1)
        out = torch.einsum("hgl,hld->hgd", probs, v).reshape(1, 1, -1, dim)
        return out.to(query.dtype), None

    name = f"probe_{rule.kind}_{rule.dense_layers}_{rule.page}_{budget}"
    AttentionInterface.register(name, attention)
    return name


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.retrieval_probe",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="niah_single,niah_multikey,niah_multivalue")
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--samples", type=int, default=30, help="in all, tasks in turn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=float, default=0.25)
    parser.add_argument("--variants", default="quest,oracle")
    args = parser.parse_args(argv)
    rules = {name: parse_rule(name) for name in args.variants.split(",")}

    from loadtests.probe_common import compare, greedy, load_model

    tokenizer, model = load_model(attn_implementation="sdpa")
    counters = {name: Counter() for name in rules}
    names = {name: install(rule, args.budget, counters[name]) for name, rule in rules.items()}

    def decode(name, ids, tokens):
        model.set_attn_implementation("sdpa" if name is None else names[name])
        return greedy(model, ids, tokens)

    rows = compare(tokenizer, args.tasks.split(","), args.length, args.samples, args.seed,
                   list(rules), decode)
    print(f"\n{args.samples} samples of {args.tasks} at {args.length} tokens, seed "
          f"{args.seed}, budget {args.budget}\n")
    print("| variant | entries attended | score | of full | identical | token agreement |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, row in rows.items():
        c = counters.get(name)
        share = f"{c.attended / c.held:.1%}" if c and c.held else "100%"
        print(f"| {name} | {share} | {row['score']:.1f} | {row['of_full']} | "
              f"{row['identical']} | {row['agreement']} |")


if __name__ == "__main__":
    main()
