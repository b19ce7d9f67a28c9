"""The worker side of KV policies: per step, read the scheduler's plan (`plan.py`), give
the attention kernel the compacted view of each request, and after each layer's
attention run the policy and write the survivors.

One `PolicyRuntime` per worker process. The policy-aware attention backend calls
`remap` from its metadata builder and `after_attention` from its impl; the worker class
(`worker.py`) calls `begin_step`. The impl supplies `read_blocks`/`write_blocks` (entries)
and `read_stream`/`write_stream` (raw bytes per KV head) for its cache layout, so this
module never depends on one platform's layout.

A request under a packing policy (KIVI) attends here rather than in the kernel once it
holds packed entries: the kernel is shown only its in-place blocks and its output rows
for that request are replaced by attention over the dequantized stream plus those blocks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from cache_policies.base import KVPolicy, PolicyInputs, attention_probs
from cache_policies.compress.kivi import pack_groups, unpack_groups
from cache_policies.plan import ATTRIBUTE, PolicyStep
from cache_policies.registry import make_policy


ACCUMULATE_CHUNK = 256  # queries per softmax, bounding its memory


@dataclass
class _Row:
    row: int
    req_id: str
    step: PolicyStep
    policy: KVPolicy
    live: torch.Tensor  # physical block ids, in order, as the kernel reads them
    length: int  # physical entries the kernel reads after this step


class PolicyRuntime:
    def __init__(self) -> None:
        self.steps: dict[str, PolicyStep] = {}
        self.runner = None
        self.rows: list[_Row] = []
        self.block_size = 0
        self.accumulated: dict[tuple[str, str], torch.Tensor] = {}  # (req, layer) -> (H, P)
        self.streams: dict[str, tuple[int, ...]] = {}  # req -> blocks holding its packed KV
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
        released = [b for req in gone if req in self.streams for b in self.streams.pop(req)]
        if released:
            self._clear(torch.tensor(released, dtype=torch.long))

    def _clear(self, blocks: torch.Tensor) -> None:
        """Zero blocks that held packed bytes, before anyone reuses them: read as entries
        they may hold NaN/inf patterns, and the kernel multiplies the unused slots of a
        partial block by a zero weight (0 * NaN is NaN). Their new owner writes only later
        in this step, and vLLM gives freed blocks out no earlier than this step."""
        for cache in self.runner.kv_caches:
            cache[blocks] = 0

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
            if step.packed_groups or step.compaction and self._policy(step).packs:
                self.streams[req_id] = self._stream_blocks(step)
            if step.packed_groups:  # the stream is not entries: the kernel reads in-place only
                live, hidden = in_place, step.tail_start
            else:
                live = torch.cat([torch.tensor(step.front, dtype=table.dtype), in_place])
                hidden = step.dead_blocks
            if hidden:
                if new_table is None:
                    new_table, new_lens = table.clone(), seq_lens.clone()
                new_table[row, : live.numel()] = live
                length -= hidden * block_size
                new_lens[row] = length
            self.rows.append(_Row(row, req_id, step, self._policy(step), live, length))
        if new_table is None:
            return common
        return dataclasses.replace(common, block_table_tensor=new_table, seq_lens=new_lens)

    # --- after each layer's attention -----------------------------------------------

    def after_attention(self, impl, layer, query: torch.Tensor, kv_cache: torch.Tensor,
                        attn_metadata, output: torch.Tensor) -> None:
        """query: (tokens, heads, head_dim) of this step; kv_cache in the impl's layout,
        already holding this step's keys and values; output (tokens, heads, head_dim)."""
        starts = attn_metadata.query_start_loc
        layer_name = getattr(layer, "layer_name", str(id(layer)))
        for r in self.rows:
            compaction = r.step.compaction
            q_start, q_end = int(starts[r.row]), int(starts[r.row + 1])
            if r.policy.packs:
                if r.step.packed_groups:
                    rows = output[q_start:q_end]
                    rows.copy_(self._packed_attention(impl, layer, r, query[q_start:q_end],
                                                      kv_cache).reshape(rows.shape))
                if compaction is not None:
                    self._pack(impl, layer, r, kv_cache)
                continue
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

    @staticmethod
    def _stream_blocks(step: PolicyStep) -> tuple[int, ...]:
        """The blocks of the stream once this step's compaction (if any) has run."""
        return step.front[step.pinned:] + (step.compaction.targets if step.compaction else ())

    def _packed_attention(self, impl, layer, r: _Row, query, kv_cache) -> torch.Tensor:
        """Attention of this step's queries (T, heads, dim) over the pinned prefix, the
        dequantized stream and the in-place entries: (T, heads, dim), fp32."""
        step, bs = r.step, self.block_size
        fmt = r.policy.format(impl.head_size, bs)
        stream = impl.read_stream(layer, kv_cache, torch.tensor(step.front[step.pinned:]))
        groups = stream[:, : step.packed_groups * fmt.group_bytes]
        keys, values = unpack_groups(groups.view(stream.shape[0], step.packed_groups, -1), fmt)
        parts = [(keys, values), impl.read_blocks(layer, kv_cache, r.live, r.length)]
        if step.pinned:
            pinned = torch.tensor(step.front[: step.pinned], dtype=torch.long)
            parts.insert(0, impl.read_blocks(layer, kv_cache, pinned, step.pinned * bs))
        keys = torch.cat([k.float() for k, _ in parts], dim=1)
        values = torch.cat([v.float() for _, v in parts], dim=1)
        tokens, heads, dim = query.shape
        probs = attention_probs(query.transpose(0, 1), keys, impl.scale,
                                keys.shape[1] - tokens)  # (kv_heads, group, T, P)
        out = torch.einsum("hgtp,hpd->hgtd", probs, values)
        return out.reshape(heads, tokens, dim).transpose(0, 1)

    def _pack(self, impl, layer, r: _Row, kv_cache) -> None:
        """Quantize the compaction's sources and append them to the stream."""
        step, c = r.step, r.step.compaction
        fmt = r.policy.format(impl.head_size, self.block_size)
        sources = torch.tensor(c.sources, dtype=torch.long)
        keys, values = impl.read_blocks(layer, kv_cache, sources, len(c.sources) * self.block_size)
        packed = pack_groups(keys, values, fmt).flatten(1)  # (kv_heads, sources * group_bytes)
        blocks = torch.tensor(self._stream_blocks(step), dtype=torch.long)
        stream = impl.read_stream(layer, kv_cache, blocks)
        start = step.packed_groups * fmt.group_bytes
        stream[:, start: start + packed.shape[1]] = packed
        impl.write_stream(layer, kv_cache, blocks, stream)

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
