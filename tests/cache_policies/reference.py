"""Plain, loop-by-loop PyTorch of each paper's rule, for the reference tests.

Written for readability, one KV head and one position at a time; shapes as in
`cache_policies.base.PolicyInputs`. Attention rows come from `torch.softmax` on explicit
dot products."""

from __future__ import annotations

import math

import torch


def attention_rows(x, head: int) -> list[list[torch.Tensor]]:
    """For KV head `head`: per query head of its group, per window query, the softmax
    row over the P keys (causal). -> [group][W] tensors of shape (P,)"""
    kv_heads, length, _ = x.keys.shape
    group = x.queries.shape[0] // kv_heads
    window = x.queries.shape[1]
    rows = []
    for g in range(group):
        q_head = head * group + g
        per_query = []
        for w in range(window):
            pos = length - window + w
            logits = torch.full((length,), float("-inf"))
            for p in range(pos + 1):
                logits[p] = float(x.queries[q_head, w].float() @ x.keys[head, p].float()) * x.scale
            per_query.append(torch.softmax(logits, dim=0))
        rows.append(per_query)
    return rows


def best(scores: list[float], keep: int) -> list[int]:
    """The `keep` highest scores; on a tie the later position wins; in position order."""
    order = sorted(range(len(scores)), key=lambda p: (-scores[p], -p))
    return sorted(order[:keep])


def protected(x, count: int) -> set[int]:
    return set(range(max(0, x.length - count), x.region))


def streaming(x, sinks: int = 4) -> list[list[int]]:
    recent = list(range(x.region - (x.keep - sinks), x.region))
    return [sorted(set(range(sinks)) | set(recent))] * x.keys.shape[0]


def snapkv(x, kernel: int = 7) -> list[list[int]]:
    kept = []
    for h in range(x.keys.shape[0]):
        rows = attention_rows(x, h)
        votes = [sum(float(r[p]) for per_query in rows for r in per_query) / len(rows)
                 for p in range(x.region)]
        half = kernel // 2
        pooled = [max(votes[max(0, p - half): p + half + 1]) for p in range(x.region)]
        for p in protected(x, x.queries.shape[1]):
            pooled[p] = math.inf
        kept.append(best(pooled, x.keep))
    return kept


def chunkkv(x, chunk: int, reach: int = 0) -> list[list[int]]:
    kv_heads = x.keys.shape[0]
    per_head = [window_votes(x, h) for h in range(kv_heads)]
    votes = [sum(v[p] for v in per_head) / kv_heads for p in range(x.region)]
    scores = [sum(votes[c: c + chunk]) for c in range(0, x.region, chunk)]
    per_token = [max(scores[p // chunk], scores[(p - reach) // chunk] if p >= reach else 0.0)
                 for p in range(x.region)]
    for p in protected(x, x.queries.shape[1]):
        per_token[p] = math.inf
    return [best(per_token, x.keep)] * kv_heads


def h2o(x) -> list[list[int]]:
    kept = []
    recent = (x.keep + x.length - x.region) // 2
    for h in range(x.keys.shape[0]):
        scores = [float(x.accumulated[h, p]) for p in range(x.region)]
        for p in protected(x, recent):
            scores[p] = math.inf
        kept.append(best(scores, x.keep))
    return kept


def tova(x) -> list[list[int]]:
    kv_heads = x.keys.shape[0]
    last = [[r[-1] for r in attention_rows(x, h)] for h in range(kv_heads)]
    heads = [row for per_head in last for row in per_head]
    scores = [sum(float(row[p]) for row in heads) / len(heads) for p in range(x.region)]
    return [best(scores, x.keep)] * kv_heads


def window_votes(x, h: int) -> list[float]:
    rows = attention_rows(x, h)
    return [sum(float(r[p]) for per_query in rows for r in per_query) / len(rows)
            for p in range(x.region)]


def survivors(x, h: int):
    """SnapKV's choice without pooling (the merge policies' survivors), and the head's
    candidate keys and values in fp32."""
    votes = window_votes(x, h)
    for p in protected(x, x.queries.shape[1]):
        votes[p] = math.inf
    return best(votes, x.keep), x.keys[h, : x.region].float(), x.values[h, : x.region].float()


def kvmerger(x, threshold: float = 0.75):
    """Kept positions and merged (keys, values) per head, by the rule in the docstring of
    `cache_policies.merge.kvmerger`."""
    out = []
    for h in range(x.keys.shape[0]):
        kept, keys, values = survivors(x, h)
        set_of = [0]
        for p in range(1, x.region):
            cos = float(torch.nn.functional.cosine_similarity(keys[p], keys[p - 1], dim=0))
            set_of.append(set_of[-1] + (cos < threshold))
        members: dict[int, list[int]] = {k: [] for k in kept}
        for p in range(x.region):
            if p in members:
                continue
            same = [k for k in kept if set_of[k] == set_of[p]]
            if same:  # nearest survivor of the set; the earlier one on a tie
                members[min(same, key=lambda k: (abs(k - p), k))].append(p)
        new_k, new_v = [], []
        for k in kept:
            dist2 = [float(((keys[m] - keys[k]) ** 2).sum()) for m in members[k]]
            spread = sum(dist2) / len(dist2) if dist2 else 1.0
            weights = [math.exp(-d / (2 * max(spread, 1e-12))) for d in dist2]
            norm = 1 + sum(weights)
            new_k.append((keys[k] + sum(w * keys[m] for w, m in zip(weights, members[k]))) / norm)
            new_v.append((values[k] + sum(w * values[m] for w, m in zip(weights, members[k]))) / norm)
        out.append((kept, torch.stack(new_k), torch.stack(new_v)))
    return out


def d2o(x):
    out = []
    for h in range(x.keys.shape[0]):
        kept, keys, values = survivors(x, h)
        evicted = [p for p in range(x.region) if p not in kept]
        nearest = {}
        for p in evicted:
            sims = [float(torch.nn.functional.cosine_similarity(keys[p], keys[k], dim=0))
                    for k in kept]
            top = max(range(len(kept)), key=lambda i: (sims[i], -i))
            nearest[p] = (kept[top], sims[top])
        threshold = sum(s for _, s in nearest.values()) / max(len(evicted), 1)
        new_k, new_v = [], []
        for k in kept:
            merged = [(p, s) for p, (c, s) in nearest.items() if c == k and s >= threshold]
            weights = [math.exp(s) for _, s in merged]
            norm = math.e + sum(weights)
            new_k.append((math.e * keys[k] + sum(w * keys[p] for w, (p, _) in zip(weights, merged))) / norm)
            new_v.append((math.e * values[k] + sum(w * values[p] for w, (p, _) in zip(weights, merged))) / norm)
        out.append((kept, torch.stack(new_k), torch.stack(new_v)))
    return out


def kivi_roundtrip(keys: torch.Tensor, values: torch.Tensor, bits: int, group: int,
                   value_bits: int | None = None):
    """KIVI's rule, one element at a time: keys per channel over each group of tokens,
    values per token over its channels; asymmetric min/max with fp16 scale and minimum.
    keys, values (kv_heads, n * group, head_dim) -> what dequantization gives back.
    Values take `value_bits` (default: `bits`)."""

    def roundtrip(xs: list[float], levels: int = 2**bits - 1) -> list[float]:
        low = torch.tensor(min(xs), dtype=torch.float16).item()
        scale = torch.tensor((max(xs) - low) / levels, dtype=torch.float16).item() or 1.0
        return [min(max(round((x - low) / scale), 0), levels) * scale + low for x in xs]

    heads, length, dim = keys.shape
    k_out, v_out = torch.zeros(heads, length, dim), torch.zeros(heads, length, dim)
    for h in range(heads):
        for start in range(0, length, group):
            for d in range(dim):  # keys: one channel of the group at a time
                column = [float(keys[h, t, d]) for t in range(start, start + group)]
                for t, x in zip(range(start, start + group), roundtrip(column)):
                    k_out[h, t, d] = x
        for t in range(length):  # values: one token at a time
            v_out[h, t] = torch.tensor(roundtrip([float(v) for v in values[h, t]],
                                                 2 ** (value_bits or bits) - 1))
    return k_out, v_out


def quest_bounds(query: torch.Tensor, keys: torch.Tensor, block: int) -> list[list[float]]:
    """Quest's rule, loop by loop: for KV head h and block b, the largest over the query
    heads of its group of sum_d max(q_d * min_d, q_d * max_d). query (heads, dim)."""
    kv_heads, length, dim = keys.shape
    group = query.shape[0] // kv_heads
    out = []
    for h in range(kv_heads):
        row = []
        for b in range(length // block):
            best_bound = float("-inf")
            for g in range(group):
                q = query[h * group + g]
                bound = 0.0
                for d in range(dim):
                    column = [float(keys[h, t, d]) for t in range(b * block, (b + 1) * block)]
                    bound += max(float(q[d]) * min(column), float(q[d]) * max(column))
                best_bound = max(best_bound, bound)
            row.append(best_bound)
        out.append(row)
    return out


def activation_probe(queries: torch.Tensor) -> torch.Tensor:
    """ActQKV's probe, one head and one window query at a time: queries weighted by
    their activation bias sum_j (q_tj - mean_j)^2 / var_j over the window."""
    heads, window, dim = queries.shape
    probe = torch.zeros(heads, dim)
    for h in range(heads):
        mean = [sum(float(queries[h, t, j]) for t in range(window)) / window for j in range(dim)]
        var = [max(sum((float(queries[h, t, j]) - mean[j]) ** 2 for t in range(window)) / window,
                   1e-6) for j in range(dim)]
        bias = [sum((float(queries[h, t, j]) - mean[j]) ** 2 / var[j] for j in range(dim))
                for t in range(window)]
        for t in range(window):
            probe[h] += bias[t] / sum(bias) * queries[h, t].float()
    return probe


def page_attention(query: torch.Tensor, keys: torch.Tensor, scale: float,
                   page: int) -> list[list[float]]:
    """The attention each page receives, loop by loop: for KV head h, each query head g
    of its group takes the softmax of its scaled logits over every key; page b's share
    is the sum over its keys, summed over the group. query (heads, dim)."""
    kv_heads, length, dim = keys.shape
    group = query.shape[0] // kv_heads
    out = []
    for h in range(kv_heads):
        row = [0.0] * (length // page)
        for g in range(group):
            q = query[h * group + g]
            logits = [scale * sum(float(q[d]) * float(keys[h, t, d]) for d in range(dim))
                      for t in range(length)]
            top = max(logits)
            weights = [math.exp(x - top) for x in logits]
            total = sum(weights)
            for t, w in enumerate(weights):
                row[t // page] += w / total
        out.append(row)
    return out
