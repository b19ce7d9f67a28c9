"""The worker side of KV policies: per step, read the scheduler's plan (`plan.py`), give
the attention kernel the compacted view of each request, and after each layer's
attention run the policy and write the survivors.

One `PolicyRuntime` per worker process. The policy-aware attention backend calls
`remap` from its metadata builder and `after_attention` from its impl; the worker class
(`worker.py`) calls `begin_step`. The impl supplies `read_blocks`/`write_blocks` (entries)
and `read_stream`/`write_stream` (raw bytes per KV head) for its cache layout, so this
module never depends on one platform's layout.

A request under a packing policy (KIVI, CSKV) attends here rather than in the kernel once it
holds packed entries: the kernel is shown only its in-place blocks and its output rows
for that request are replaced by attention over the dequantized stream plus those blocks.
A request under a retrieval policy (Quest, ActQKV, Shadow4) attends here in its decode
steps, over the blocks the policy selects for each KV head; the kernel is shown only the
block being written. Its prefill runs in the kernel, over everything.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import torch

from cache_policies import offload
from cache_policies.base import KVPolicy, PolicyInputs, attend_parts, attention_probs
from cache_policies.stats import retrieval_stats
from cache_policies.plan import ATTRIBUTE, PolicyStep
from cache_policies.registry import make_policy


ACCUMULATE_CHUNK = 256  # queries per softmax, bounding its memory
OFFLOADED = -1  # a logical block held by the offload tier, in a retrieval row's block list


@dataclass
class _Row:
    row: int
    req_id: str
    step: PolicyStep
    policy: KVPolicy
    live: torch.Tensor  # physical block ids, in order, as the kernel reads them
    length: int  # physical entries the kernel reads after this step
    blocks: torch.Tensor | None = None  # retrieval: every logical block (OFFLOADED: tier)
    retrieving: bool = True  # retrieval: this step attends here, to selected blocks


class PolicyRuntime:
    def __init__(self) -> None:
        self.steps: dict[str, PolicyStep] = {}
        self.runner = None
        self.rows: list[_Row] = []
        self.block_size = 0
        self.accumulated: dict[tuple[str, str], torch.Tensor] = {}  # (req, layer) -> (H, P)
        self.streams: dict[str, tuple[int, ...]] = {}  # req -> blocks holding its packed KV
        self.summaries: dict[tuple[str, str], torch.Tensor] = {}  # (req, layer) -> (n, ...)
        self.recent: dict[tuple[str, str], torch.Tensor] = {}  # (req, layer) -> (heads, W, D)
        self.retrieval = retrieval_stats()
        self._store = None  # the offload tier, made on first use (in the worker process)
        self._policies: dict = {}

    def begin_step(self, scheduler_output, runner) -> None:
        self.runner = runner
        self.steps = getattr(scheduler_output, ATTRIBUTE, None) or {}
        self.rows = []
        gone = set(scheduler_output.finished_req_ids) | set(scheduler_output.preempted_req_ids or ())
        resumed = set(getattr(scheduler_output.scheduled_cached_reqs, "resumed_req_ids", ()) or ())
        if gone or resumed:
            drop = gone | resumed
            for table in (self.accumulated, self.summaries, self.recent):
                for key in [k for k in table if k[0] in drop]:
                    del table[key]
        if self._store is not None:
            for req in gone:
                self._store.drop(req)
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
        self.retrieval.flush()

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
            policy = self._policy(step)
            if policy.retrieves:
                blocks = table[row, : (length + block_size - 1) // block_size].clone()
                if step.tail_start:  # logical blocks front..tail_start-1 are offloaded
                    blocks[: len(step.front)] = torch.tensor(step.front, dtype=blocks.dtype)
                    blocks[len(step.front): step.tail_start] = OFFLOADED
                if self._retrieving(common, row, policy, length, step):
                    if new_table is None:
                        new_table, new_lens = table.clone(), seq_lens.clone()
                    new_table[row, 0] = blocks[-1]  # the kernel sees the block being written
                    new_lens[row] = length - (len(blocks) - 1) * block_size
                    self.rows.append(_Row(row, req_id, step, policy, blocks[-1:],
                                          int(new_lens[row]), blocks))
                else:
                    self.rows.append(_Row(row, req_id, step, policy, table[row, :0], length,
                                          blocks, retrieving=False))
                continue
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
            self.rows.append(_Row(row, req_id, step, policy, live, length))
        if new_table is None:
            return common
        return dataclasses.replace(common, block_table_tensor=new_table, seq_lens=new_lens)

    def _retrieving(self, common, row: int, policy, length: int, step: PolicyStep) -> bool:
        """A decode step (one query) of a request with more pages than its budget, or
        with blocks in the offload tier (the kernel cannot reach them)."""
        starts = common.query_start_loc_cpu
        pages = -(-length // policy.page)
        return (int(starts[row + 1] - starts[row]) == 1
                and (policy.limit(pages) < pages or step.tail_start > 0))

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
            if r.policy.retrieves:
                key = (r.req_id, layer_name)
                recent = query[q_start:q_end].transpose(0, 1)[:, -r.policy.window:]
                if r.policy.window > 1 and key in self.recent:
                    recent = torch.cat([self.recent[key], recent], 1)[:, -r.policy.window:]
                self.recent[key] = recent.float()
                if r.retrieving:
                    rows = output[q_start:q_end]
                    rows.copy_(self._retrieved_attention(impl, layer, key, r, kv_cache)
                               .reshape(rows.shape))
                if compaction is not None:
                    self._offload(impl, layer, key, r, kv_cache)
                continue
            if r.policy.packs:
                if r.step.packed_groups:
                    rows = output[q_start:q_end]
                    rows.copy_(self._packed_attention(impl, layer, r, query[q_start:q_end],
                                                      kv_cache).reshape(rows.shape))
                if compaction is not None:
                    self._pack(impl, layer, r, query[q_start:q_end], kv_cache)
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
        keys, values = r.policy.unpack(groups.view(stream.shape[0], step.packed_groups, -1), fmt,
                                       layer_index(layer), step.pinned * bs)
        parts = [(keys, values), impl.read_blocks(layer, kv_cache, r.live, r.length)]
        if step.pinned:
            pinned = torch.tensor(step.front[: step.pinned], dtype=torch.long)
            parts.insert(0, impl.read_blocks(layer, kv_cache, pinned, step.pinned * bs))
        return attend_parts(query.transpose(0, 1), parts, impl.scale).transpose(0, 1)

    @property
    def store(self):
        if self._store is None:
            self._store = offload.make_store()
        return self._store

    def _summaries(self, impl, layer, key, r: _Row, kv_cache, end: int) -> torch.Tensor:
        """The policy's page summaries of logical blocks 0..end-1, each block's made once (a
        full block never changes) while the block is still in the cache."""
        summaries = self.summaries.get(key)
        per_block = self.block_size // r.policy.page
        done = 0 if summaries is None else summaries.shape[0] // per_block
        if done < end:
            keys, _ = impl.read_blocks(layer, kv_cache, r.blocks[done:end],
                                       (end - done) * self.block_size)
            fresh = r.policy.summarize(keys)
            summaries = fresh if summaries is None else torch.cat([summaries, fresh])
            self.summaries[key] = summaries
        return summaries

    def _retrieved_attention(self, impl, layer, key, r: _Row, kv_cache) -> torch.Tensor:
        """Attention of this decode step's query over the pages the policy selects per KV
        head, plus the block being written: (1, heads, dim), fp32. Blocks holding selected
        pages are read whole, from the cache or from the offload tier; the pages not
        selected for a head are masked out of its softmax."""
        bs, page = self.block_size, r.policy.page
        per_block = bs // page
        full = len(r.blocks) - 1  # full blocks: their pages are the candidates
        summaries = self._summaries(impl, layer, key, r, kv_cache, full)
        tail_pages = -(-r.length // page)
        limit = r.policy.limit(full * per_block + tail_pages)
        mask = r.policy.select(self.recent[key], summaries[: full * per_block], impl.scale,
                               limit - tail_pages, r.policy.recent_pages)
        by_block = mask.view(mask.shape[0], full, per_block)
        chosen = by_block.any(dim=2).any(dim=0).nonzero().flatten()  # blocks to read
        away = r.blocks[chosen] == OFFLOADED
        here, there = chosen[~away], chosen[away]
        parts = [impl.read_blocks(layer, kv_cache, torch.cat([r.blocks[here], r.blocks[-1:]]),
                                  len(here) * bs + r.length)]
        if len(there):
            raw = self.store.get(r.req_id, key[1], there.tolist())
            parts.insert(0, impl.read_raw(layer, kv_cache, raw, len(there) * bs))
        keys = torch.cat([k.float() for k, _ in parts], dim=1)
        values = torch.cat([v.float() for _, v in parts], dim=1)
        order = torch.cat([there, here])  # the blocks' order in keys, then the newest
        query = self.recent[key][:, -1]  # (heads, dim)
        kv_heads, dim = keys.shape[0], keys.shape[-1]
        logits = torch.einsum("hgd,hpd->hgp", query.view(kv_heads, -1, dim), keys)
        hidden = ~by_block[:, order].flatten(1).repeat_interleave(page, dim=1)
        hidden = torch.nn.functional.pad(hidden, (0, r.length)).unsqueeze(1)
        probs = (logits * impl.scale).masked_fill(hidden, float("-inf")).softmax(-1)
        out = torch.einsum("hgp,hpd->hgd", probs, values)
        self.retrieval.add(r.policy.name, attended=int(mask.sum()) + tail_pages * kv_heads,
                           candidates=(mask.shape[1] + tail_pages) * kv_heads)
        return out.reshape(1, -1, dim)

    def _offload(self, impl, layer, key, r: _Row, kv_cache) -> None:
        """Move the compaction's sources to the offload tier, summarized first."""
        c = r.step.compaction
        self._summaries(impl, layer, key, r, kv_cache, c.start + len(c.sources))
        raw = kv_cache[torch.tensor(c.sources, dtype=torch.long)]
        self.store.put(r.req_id, key[1], c.start, raw)

    def _pack(self, impl, layer, r: _Row, query, kv_cache) -> None:
        """Quantize the compaction's sources (with `keep`, the policy's survivors among
        them) and append them to the stream."""
        step, c, bs = r.step, r.step.compaction, self.block_size
        fmt = r.policy.format(impl.head_size, bs)
        if c.keep:  # the first packing: nothing packed yet, every block after `pinned` in place
            keys, values = impl.read_blocks(layer, kv_cache, r.live[step.pinned:],
                                            r.length - step.pinned * bs)
            kept = r.policy.compress(PolicyInputs(keys, values, window_queries(r, query),
                                                  impl.scale, len(c.sources) * bs, c.keep))
            keys, values = kept.keys, kept.values
        else:
            sources = torch.tensor(c.sources, dtype=torch.long)
            keys, values = impl.read_blocks(layer, kv_cache, sources, len(c.sources) * bs)
        first = (step.pinned + step.packed_groups) * bs  # the stream is in order
        packed = r.policy.pack(keys, values, fmt, layer_index(layer), first).flatten(1)
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
        received = self.accumulated.get(key)
        accumulated = None
        if received is not None:
            accumulated = received[:, offset:]
            if accumulated.shape[1] < length:
                accumulated = torch.nn.functional.pad(accumulated, (0, length - accumulated.shape[1]))
        x = PolicyInputs(keys, values, window_queries(r, query), impl.scale,
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


def window_queries(r: _Row, query: torch.Tensor) -> torch.Tensor:
    """The step's last `window` queries (all, if fewer), as PolicyInputs wants them."""
    return query[-r.policy.window:].transpose(0, 1)


def layer_index(layer) -> int:
    """The decoder layer an attention layer belongs to, from vLLM's layer name
    ("model.layers.3.self_attn.attn" -> 3)."""
    match = _LAYER_INDEX.search(getattr(layer, "layer_name", ""))
    return int(match[1]) if match else -1


_LAYER_INDEX = re.compile(r"layers\.(\d+)\.")
RUNTIME = PolicyRuntime()
