"""What the CPU and CUDA sparse backends share: which requests of a batch prefill
sparsely this step, each chunk's pattern on a layer, and the counters."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from attention_backends.policy_aware.base import attend_rows
from attention_backends.sparse.config import DEFAULT_ENV, SparseConfig
from attention_backends.sparse.patterns import make_estimator
from attention_backends.sparse.patterns.base import dense_pattern
from attention_backends.sparse.stats import SPARSE_STATS
from cache_policies.runtime import RUNTIME, layer_index
from kernels.sparse_attention import SparsePattern


@dataclass
class SparseRow:
    start: int  # the request's tokens in the batch: start..end-1
    end: int
    q_offset: int  # tokens before the chunk (cached prefix, earlier chunks)
    table: torch.Tensor  # physical block ids of the request, in order
    config: SparseConfig
    ends_prompt: bool  # the chunk holds the prompt's last tokens


@dataclass
class SparseBatch:
    rows: list[SparseRow]
    dense: object | None  # the platform metadata of the other requests, or None if none
    dense_tokens: torch.Tensor | None  # their tokens' indices in the batch


@functools.lru_cache(maxsize=256)
def _parse(spec: str) -> SparseConfig | None:
    values = json.loads(spec)
    if not values or values.pop("name", "dense") != "sparse":
        return None
    return SparseConfig.from_dict(values)


def request_config(extra_args: dict | None) -> SparseConfig | None:
    """The request's sparse config (as the server filled it in), else the deployment's."""
    applied = ((extra_args or {}).get("longserve") or {}).get("attention")
    if applied is None:
        return _parse(os.environ.get(DEFAULT_ENV, "{}"))
    return _parse(json.dumps(applied, sort_keys=True))


def plan_rows(starts: list[int], seq_lens: list[int], block_table: torch.Tensor,
              pattern_block: int) -> tuple[list[SparseRow], list[int]] | None:
    """The batch's sparse rows (prefill chunks of requests whose config asks for sparse,
    over `min_len`, not under a KV policy) and the indices of the other rows; None when
    no row is sparse. `starts` is query_start_loc, `seq_lens` each row's keys (exact for
    prefill rows), both on the host; `pattern_block` the tokens per pattern block (on CPU
    the cache's block, on CUDA `cuda.PATTERN_BLOCK`)."""
    runner = RUNTIME.runner
    if runner is None:
        return None
    policy_rows = {r.row for r in RUNTIME.rows}
    rows, dense = [], []
    for row, req_id in enumerate(runner.input_batch.req_ids[: len(seq_lens)]):
        start, end, n_keys = starts[row], starts[row + 1], seq_lens[row]
        request = runner.requests.get(req_id)
        if request is None or end - start < 2 or row in policy_rows:  # decode: no parse
            dense.append(row)
            continue
        config = request_config(request.sampling_params.extra_args
                                if request.sampling_params else None)
        if config is None or n_keys < config.min_len:
            dense.append(row)
            continue
        config = dataclasses.replace(config, block=pattern_block)
        rows.append(SparseRow(start, end, n_keys - (end - start), block_table[row], config,
                              n_keys >= request.num_prompt_tokens))
    return (rows, dense) if rows else None


def row_pattern(row: SparseRow, layer, q: torch.Tensor, keys: Callable[[], torch.Tensor],
                scale: float, kv_heads: int, per_kv_head: bool = True) -> SparsePattern:
    """The chunk's pattern on this layer: every causal block in the first `dense_layers`
    layers, else the estimate (the prompt's last `last_q` tokens' blocks dense). q (n_q,
    heads, dim); `keys()` gives (n_keys, kv_heads, dim), the prefix and the chunk (not
    called for a dense layer)."""
    if layer_index(layer) < row.config.dense_layers:
        return dense_pattern(row.q_offset, row.end - row.start,
                             kv_heads if per_kv_head else q.shape[1], row.config.block)
    return make_estimator(row.config).estimate(
        q, keys(), row.q_offset, scale, per_kv_head=per_kv_head,
        dense_tail=row.config.last_q if row.ends_prompt else 0)


def count_row(row: SparseRow, pattern: SparsePattern, heads: int) -> None:
    """The sparse counters for one chunk: the pairs its pattern's blocks hold against the
    causal pairs, over every query head."""
    n_q = row.end - row.start
    causal = n_q * row.q_offset + n_q * (n_q + 1) // 2
    SPARSE_STATS.add(row.config.method, chunks=1, tokens=n_q,
                     pairs_attended=pattern.block_pairs(n_q) * (heads // pattern.heads),
                     pairs_causal=causal * heads)


class SparseAttendMixin:
    """Put first in a platform impl's bases: a batch with sparse rows runs its other rows
    through the platform kernel (metadata of their own) and each sparse row through
    `attend_sparse`. The impl says which layers the sparse path covers (`sparse_covers`)."""

    def sparse_covers(self, output_scale) -> bool:
        raise NotImplementedError

    def attend_sparse(self, layer, query, key, kv_cache, row: SparseRow, output) -> None:
        raise NotImplementedError

    def attend(self, layer, query, key, value, kv_cache, attn_metadata, output,
               output_scale=None, output_block_scale=None):
        batch = getattr(attn_metadata, "sparse", None)
        if batch is None or not self.sparse_covers(output_scale):
            return super().attend(layer, query, key, value, kv_cache,  # type: ignore[misc]
                                  attn_metadata, output, output_scale, output_block_scale)
        if batch.dense is not None:
            attend_rows(super().attend, layer, query, key, value, kv_cache,  # type: ignore[misc]
                        batch.dense, batch.dense_tokens, output)
        for row in batch.rows:
            self.attend_sparse(layer, query, key, kv_cache, row, output)
        return output
