"""The worker side of KV policies: per step, read the scheduler's plan (`plan.py`), give
the attention kernel the compacted view of each request, and after each layer's
attention run the policy and write the survivors.

One `PolicyRuntime` per worker process. The policy-aware attention backend calls
`remap` from its metadata builder and `after_attention` from its impl; the worker class
(`worker.py`) calls `begin_step`. The impl supplies `read_blocks`/`write_blocks` for its
cache layout, so this module never depends on one platform's layout.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from cache_policies.base import KVPolicy, PolicyInputs, attention_probs
from cache_policies.plan import ATTRIBUTE, PolicyStep
from cache_policies.registry import make_policy


ACCUMULATE_CHUNK = 256  # queries per softmax, bounding its memory


@dataclass
class _Row:
    row: int
    req_id: str
    step: PolicyStep
    policy: KVPolicy
    live: torch.Tensor  # physical block ids, in order
    length: int  # physical entries after this step


class PolicyRuntime:
    def __init__(self) -> None:
        self.steps: dict[str, PolicyStep] = {}
        self.runner = None
        self.rows: list[_Row] = []
        self.block_size = 0
        self.accumulated: dict[tuple[str, str], torch.Tensor] = {}  # (req, layer) -> (H, P)
        self._policies: dict = {}

    def begin_step(self, scheduler_output, runner) -> None:
        self.runner = runner
        self.steps = getattr(scheduler_output, ATTRIBUTE, None) or {}
        self.rows = []
        gone = set(scheduler_output.finished_req_ids) | set(scheduler_output.preempted_req_ids or ())
        resumed = set(getattr(scheduler_output.scheduled_cached_reqs, "resumed_req_ids", ()) or ())
        if gone or resumed:
            drop = gone | resumed
            self.accumulated = {k: v for k, v in self.accumulated.items() if k[0] not in drop}

    def end_step(self) -> None:
        self.steps, self.rows = {}, []

    def _policy(self, step: PolicyStep) -> KVPolicy:
        policy = self._policies.get(step.policy)
        if policy is None:
            policy = self._policies[step.policy] = make_policy(step.policy)
        return policy

    # --- metadata: the compacted view -----------------------------------------------

    def remap(self, common, block_size: int):
        """CommonAttentionMetadata with each compacted request's live blocks first and its
        seq_len counting live entries only; rows of other requests are untouched."""
        self.rows = []
        if not self.steps or self.runner is None:
            return common
        self.block_size = block_size
        req_ids = self.runner.input_batch.req_ids[: common.num_reqs]
        table, seq_lens = common.block_table_tensor, common.seq_lens
        new_table = new_lens = None
        for row, req_id in enumerate(req_ids):
            step = self.steps.get(req_id)
            if step is None:
                continue
            length = int(seq_lens[row])
            in_place = table[row, step.tail_start: (length + block_size - 1) // block_size]
            live = torch.cat([torch.tensor(step.front, dtype=table.dtype), in_place])
            if step.dead_blocks:
                if new_table is None:
                    new_table, new_lens = table.clone(), seq_lens.clone()
                new_table[row, : live.numel()] = live
                length -= step.dead_blocks * block_size
                new_lens[row] = length
            self.rows.append(_Row(row, req_id, step, self._policy(step), live, length))
        if new_table is None:
            return common
        return dataclasses.replace(common, block_table_tensor=new_table, seq_lens=new_lens)

    # --- after each layer's attention -----------------------------------------------

    def after_attention(self, impl, layer, query: torch.Tensor, kv_cache: torch.Tensor,
                        attn_metadata) -> None:
        """query: (tokens, heads, head_dim) of this step; kv_cache in the impl's layout,
        already holding this step's keys and values."""
        starts = attn_metadata.query_start_loc
        layer_name = getattr(layer, "layer_name", str(id(layer)))
        for r in self.rows:
            compaction = r.step.compaction
            q_start, q_end = int(starts[r.row]), int(starts[r.row + 1])
            accumulate = r.policy.accumulates and (q_end - q_start > 1 or compaction)
            if compaction is None and not accumulate:
                continue
            key = (r.req_id, layer_name)
            if accumulate:
                self._accumulate(impl, layer, key, r, query[q_start:q_end], kv_cache)
            if compaction is not None:
                self._compact(impl, layer, key, r, query[q_start:q_end], kv_cache)

    def _accumulate(self, impl, layer, key, r: _Row, query, kv_cache) -> None:
        """Add the attention each live entry receives from this step's queries (H2O)."""
        keys, _ = impl.read_blocks(layer, kv_cache, r.live, r.length)
        received = torch.zeros(keys.shape[:2])
        first = r.length - query.shape[0]
        for start in range(0, query.shape[0], ACCUMULATE_CHUNK):
            chunk = query[start: start + ACCUMULATE_CHUNK].transpose(0, 1)
            received += attention_probs(chunk, keys, impl.scale, first + start).sum(dim=(1, 2))
        previous = self.accumulated.get(key)
        if previous is not None:
            width = min(previous.shape[1], r.length)
            received[:, :width] += previous[:, :width]
        self.accumulated[key] = received

    def _compact(self, impl, layer, key, r: _Row, query, kv_cache) -> None:
        c = r.step.compaction
        bs = self.block_size
        region = len(c.sources) * bs
        length = region + c.tail_tokens
        offset = r.length - length  # a shared prefix before the sources stays as it is
        blocks = torch.tensor(c.sources + (c.tail,), dtype=torch.long)
        keys, values = impl.read_blocks(layer, kv_cache, blocks, length)
        window = min(r.policy.window, query.shape[0])
        received = self.accumulated.get(key)
        accumulated = None
        if received is not None:
            accumulated = received[:, offset:]
            if accumulated.shape[1] < length:
                accumulated = torch.nn.functional.pad(accumulated, (0, length - accumulated.shape[1]))
        x = PolicyInputs(keys, values, query[-window:].transpose(0, 1), impl.scale,
                         region, len(c.targets) * bs, accumulated)
        kept = r.policy.compress(x) if x.keep else None
        if kept is not None:
            impl.write_blocks(layer, kv_cache, torch.tensor(c.targets, dtype=torch.long),
                              kept.keys, kept.values)
        if accumulated is not None:
            survivors = [received[:, :offset], accumulated[:, region:length]]
            if kept is not None:
                survivors.insert(1, accumulated.gather(1, kept.indices))
            self.accumulated[key] = torch.cat(survivors, dim=1)


RUNTIME = PolicyRuntime()
