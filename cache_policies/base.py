"""The config every KV policy takes, what a policy sees, and the bases policies derive from.

A policy answers one question, on one layer of one request: given the request's live keys
and values and the queries of its last step, which `keep` of the first `region` entries
survive per KV head, and (for merge policies) what they hold afterwards. Everything else —
when it runs, reading and writing vLLM's paged cache, freeing blocks — is plumbing owned
by `runtime.py` (worker) and `scheduler.py` (engine core).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch


MAX_BUDGET_TOKENS = 2**31 - 1  # what the engine's request serialization carries


@dataclass(frozen=True)
class KVPolicyConfig:
    """A request's (or the deployment's) choice of KV policy and its budget.

    `budget` is either a ratio in (0, 1] of the prompt's KV entries kept, or an integer
    count of KV entries (tokens) kept per sequence; None means the policy's own default.
    """

    name: str
    budget: float | int | None = None

    def __post_init__(self) -> None:
        budget = self.budget
        if budget is None:
            return
        if isinstance(budget, bool) or not isinstance(budget, (int, float)):
            raise ValueError(f"kv_policy.budget must be a number, got {budget!r}")
        if isinstance(budget, float) and not 0.0 < budget <= 1.0:
            raise ValueError(
                f"kv_policy.budget {budget} is not a valid ratio: use a fraction in (0, 1] "
                "of the prompt's KV to keep, or an integer token count"
            )
        if isinstance(budget, int) and budget < 1:
            raise ValueError(f"kv_policy.budget {budget} tokens: keep at least 1 token")
        if isinstance(budget, int) and budget > MAX_BUDGET_TOKENS:
            raise ValueError(f"kv_policy.budget {budget} tokens is more than any context holds "
                             f"(at most {MAX_BUDGET_TOKENS}); a budget over the prompt keeps "
                             "all of it")

    def to_dict(self) -> dict:
        return asdict(self)

    def budget_tokens(self, num_prompt_tokens: int, default: float) -> int:
        """KV entries this request may keep: a ratio applies to the prompt's length."""
        budget = default if self.budget is None else self.budget
        if isinstance(budget, float):
            return max(1, math.ceil(budget * num_prompt_tokens))
        return budget


@dataclass
class PolicyInputs:
    """One layer of one request at the step its policy runs (positions are physical:
    0..P-1 in cache order, the last W of them being the positions of `queries`).

    keys, values: (kv_heads, P, head_dim), RoPE already applied to keys.
    queries: (heads, W, head_dim), the last W queries of the step, W >= 1.
    accumulated: (kv_heads, P) attention each entry received from every query so far
        (only for policies with `accumulates = True`), else None.
    region: entries [0, region) are candidates; [region, P) (the block being written
        to) are always kept. keep: how many candidates survive per KV head.
    """

    keys: torch.Tensor
    values: torch.Tensor
    queries: torch.Tensor
    scale: float
    region: int
    keep: int
    accumulated: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return self.keys.shape[1]


@dataclass
class Kept:
    """What survives: per KV head, `keep` candidates in position order.

    indices: (kv_heads, keep) positions in [0, region); keys, values: (kv_heads, keep,
    head_dim), the entries' new contents (gathered, or merged for merge policies)."""

    indices: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor


def window_attention(x: PolicyInputs) -> torch.Tensor:
    """Softmax attention of the window queries over all live keys, causal inside the
    window, in fp32: (kv_heads, group, W, P)."""
    return attention_probs(x.queries, x.keys, x.scale, x.length - x.queries.shape[1])


def window_votes(x: PolicyInputs) -> torch.Tensor:
    """Attention each candidate receives from the window queries, summed over the window
    and averaged over the query heads sharing its KV head: (kv_heads, region)."""
    return window_attention(x)[..., : x.region].sum(dim=2).mean(dim=1)


def attention_probs(queries: torch.Tensor, keys: torch.Tensor, scale: float,
                    first: int) -> torch.Tensor:
    """Causal softmax attention, fp32. queries (heads, W, dim) at positions first..first+W-1,
    keys (kv_heads, P, dim) -> (kv_heads, group, W, P); GQA groups share a KV head."""
    return _causal_softmax(_logits(queries, keys, scale), first)


def attend_parts(queries: torch.Tensor, parts: list[tuple[torch.Tensor, torch.Tensor]],
                 scale: float) -> torch.Tensor:
    """Causal softmax attention of queries (heads, T, dim), the last T positions, over
    keys and values given in consecutive parts, each (kv_heads, P_i, dim), without joining
    them into one copy: (heads, T, dim), fp32."""
    heads, window, _ = queries.shape
    logits = torch.cat([_logits(queries, k, scale) for k, _ in parts], dim=-1)
    probs = _causal_softmax(logits, logits.shape[-1] - window)
    shares = probs.split([k.shape[1] for k, _ in parts], dim=-1)
    out = sum(torch.einsum("hgwp,hpd->hgwd", p, v.float()) for p, (_, v) in zip(shares, parts))
    return out.reshape(heads, window, -1)


def _logits(queries: torch.Tensor, keys: torch.Tensor, scale: float) -> torch.Tensor:
    """queries (heads, W, dim), keys (kv_heads, P, dim) -> (kv_heads, group, W, P), fp32."""
    kv_heads, _, dim = keys.shape
    heads, window, _ = queries.shape
    q = queries.float().view(kv_heads, heads // kv_heads, window, dim)
    return torch.einsum("hgwd,hpd->hgwp", q, keys.float()) * scale


def _causal_softmax(logits: torch.Tensor, first: int) -> torch.Tensor:
    """Softmax over the last dim of logits (..., W, P) of queries at positions
    first..first+W-1, each seeing positions up to its own."""
    window, length = logits.shape[-2:]
    query_pos = torch.arange(first, first + window).view(window, 1)
    logits.masked_fill_(torch.arange(length).view(1, length) > query_pos, float("-inf"))
    return logits.softmax(dim=-1)


def gather_entries(x: PolicyInputs, indices: torch.Tensor) -> Kept:
    """Kept entries as they are: indices (kv_heads, keep), sorted by position."""
    index = indices.unsqueeze(-1).expand(-1, -1, x.keys.shape[-1])
    return Kept(indices, x.keys.gather(1, index), x.values.gather(1, index))


class KVPolicy:
    """Base of every policy. Subclasses set `name` and say whether a budget applies."""

    name: ClassVar[str]
    takes_budget: ClassVar[bool] = True
    default_budget: ClassVar[float] = 0.5
    window: ClassVar[int] = 1  # queries of the last step the policy looks at
    accumulates: ClassVar[bool] = False  # needs attention summed over every query
    packs: ClassVar[bool] = False  # keeps every entry, quantized into a byte stream
    retrieves: ClassVar[bool] = False  # keeps every entry, attends to a selection

    def __init__(self, config: KVPolicyConfig) -> None:
        self.config = config

    @classmethod
    def validate(cls, config: KVPolicyConfig) -> None:
        if not cls.takes_budget and config.budget is not None:
            raise ValueError(
                f"kv_policy {cls.name!r} keeps the whole cache and takes no budget; "
                "omit kv_policy.budget or choose a policy that evicts"
            )

    def compress(self, x: PolicyInputs) -> Kept:
        raise NotImplementedError(f"kv_policy {self.name!r} keeps everything")


class ScorerPolicy(KVPolicy):
    """Keep the `keep` highest-scoring candidates per KV head (kvpress's ScorerPress).
    A method implements `score`; protected entries score +inf."""

    def score(self, x: PolicyInputs) -> torch.Tensor:
        """(kv_heads, region) scores; higher is kept."""
        raise NotImplementedError

    def compress(self, x: PolicyInputs) -> Kept:
        return gather_entries(x, top_positions(self.score(x), x.keep))


def top_positions(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Positions of the `keep` best scores per row, in position order: (rows, keep).
    Ties go to the later position (the more recent token)."""
    length = scores.shape[-1]
    order = scores.flip(-1).sort(dim=-1, descending=True, stable=True).indices
    return (length - 1 - order[:, :keep]).sort(dim=-1).values


def protect_last(scores: torch.Tensor, x: PolicyInputs, count: int) -> torch.Tensor:
    """Candidates among the last `count` live positions always survive."""
    first = max(0, x.length - count)
    if first < x.region:
        scores[:, first:] = float("inf")
    return scores
