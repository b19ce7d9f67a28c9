"""vLLM's scheduler, plus KV policies: turns a policy's decision into freed blocks.

At the step where a request's prefill completes (and whenever its live KV has grown
`recompress_every` entries past its budget) the scheduler plans a compaction: it takes
fresh blocks for the survivors, tells the workers (who run the policy on that step's
queries and write the survivors there) and at once gives the request's old blocks back to
vLLM's `BlockPool`, replacing them by the null block in the request's block list as
vLLM's sliding-window manager does. Steps run in order on the workers, so a freed block
can only be handed out again for a later step, after this step has read it.

Copy, never rewrite in place: blocks the request shares through the prefix cache, or
registered there, keep their contents, so prefix-cache hits stay exact. A prefix that
other running requests hold at that moment (many questions over one cached document)
is left shared and out of the policy's reach: a private compressed copy would cost more
memory than the shared original (BENCHMARKS.md, capacity). Blocks written
after a compaction hold KV computed under compressed attention and are never registered.
Preemption frees everything and recomputes from tokens; the policy then runs again.

Packing policies (KIVI) keep every entry: at the same moments, the full blocks older than
the newest `residual` entries are quantized into the request's byte stream (`plan.py`),
which takes fresh blocks only as it grows, and the full-precision blocks go back to the
pool. A packing policy with a budget (`chunkkv_kivi8`) packs only its survivors, chosen
once at the end of prefill.
Retrieval policies (Quest, ActQKV) keep every entry and select per step on the workers;
with the offload tier on, each full block between the sink block and the recent window
is handed to the tier as it ages and goes back to the pool.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from dataclasses import dataclass, field

from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.core.single_type_kv_cache_manager import FullAttentionManager

from cache_policies import offload
from cache_policies.base import KVPolicyConfig
from cache_policies.plan import ATTRIBUTE, Compaction, PolicyStep
from cache_policies.registry import make_config, policy_class
from cache_policies.stats import PolicyStats

logger = logging.getLogger(__name__)

RECOMPRESS_ENV = "LONGSERVE_KV_RECOMPRESS_EVERY"
DEFAULT_RECOMPRESS_EVERY = 1024


@dataclass
class _Request:
    config: KVPolicyConfig
    cls: type  # the policy's class (its flags and format)
    budget: int  # tokens
    front: list = field(default_factory=list)  # KVCacheBlock: shared prefix + survivors
    tail_start: int = 0
    prefilled: bool = False
    pinned: int = 0  # leading blocks shared with other requests, kept as they are
    packed_groups: int = 0  # packing policies: groups of entries in the byte stream

    def step(self) -> PolicyStep:
        return PolicyStep(self.config, tuple(b.block_id for b in self.front), self.tail_start,
                          pinned=self.pinned, packed_groups=self.packed_groups)


def request_policy(request) -> KVPolicyConfig | None:
    """The request's policy from `extra_args["longserve"]`, None for `full` or none."""
    params = request.sampling_params
    spec = ((params.extra_args or {}).get("longserve") or {}).get("kv_policy") if params else None
    if not spec or spec.get("name", "full") == "full":
        return None
    return make_config(spec["name"], spec.get("budget"))


class PolicyScheduler(Scheduler):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        managers = self.kv_cache_manager.coordinator.single_type_managers
        self._manager = managers[0] if len(managers) == 1 else None
        if self._manager is not None and type(self._manager) is not FullAttentionManager:
            self._manager = None
        if self._manager is None:
            logger.warning("KV policies need one full-attention KV cache group; this model "
                           "has %s: requests run with the full cache", managers)
        self._policies: dict[str, _Request] = {}
        self._head_block_bytes = 0  # bytes of one KV head in one block (packing policies)
        if self._manager is not None:
            spec = self.kv_cache_config.kv_cache_groups[0].kv_cache_spec
            self._head_block_bytes = (spec.block_size * (spec.head_size + spec.head_size_v)
                                      * spec.dtype.itemsize)
            self._head_size = spec.head_size
        self._recompress_every = int(os.environ.get(RECOMPRESS_ENV, DEFAULT_RECOMPRESS_EVERY))
        self._offload = offload.enabled()
        self._stats = PolicyStats()

    # --- request lifecycle ----------------------------------------------------------

    def add_request(self, request) -> None:
        try:
            config = request_policy(request) if self._manager is not None else None
        except ValueError as exc:  # validated by the API; other clients may send anything
            logger.warning("request %s: ignoring kv_policy: %s", request.request_id, exc)
            config = None
        if config is not None and request.request_id not in self.requests:
            cls = policy_class(config.name)
            if cls.accumulates:  # it needs the attention of every prompt query
                request.skip_reading_prefix_cache = True
            budget = (config.budget_tokens(request.num_prompt_tokens, cls.default_budget)
                      if cls.takes_budget else 0)
            self._policies[request.request_id] = _Request(config, cls, budget)
            self._stats.add(config.name, requests=1)
        super().add_request(request)

    def _preempt_request(self, request, *args, **kwargs) -> None:
        super()._preempt_request(request, *args, **kwargs)
        state = self._policies.get(request.request_id)
        if state is not None:  # blocks are gone; the recompute runs the policy again
            state.front, state.tail_start, state.prefilled, state.pinned = [], 0, False, 0
            state.packed_groups = 0

    def _free_request(self, request, *args, **kwargs):
        self._policies.pop(request.request_id, None)
        return super()._free_request(request, *args, **kwargs)

    # --- each step ------------------------------------------------------------------

    def schedule(self, *args, **kwargs):
        output = super().schedule(*args, **kwargs)
        steps = {}
        for req_id in output.num_scheduled_tokens:
            state = self._policies.get(req_id)
            if state is None:
                continue
            step = state.step()  # this step's attention reads the layout as it was
            compaction = self._plan(self.requests[req_id], state)
            steps[req_id] = dataclasses.replace(step, compaction=compaction)
        setattr(output, ATTRIBUTE, steps)
        return output

    def _plan(self, request, state: _Request) -> Compaction | None:
        cls = state.cls
        if cls.retrieves and not self._offload:  # selects per step; frees nothing
            if not state.prefilled and request.num_computed_tokens >= request.num_prompt_tokens:
                state.prefilled = True  # generated KV comes from selected blocks: unregistered
                self._manager.num_cached_block[request.request_id] = sys.maxsize
            return None
        bs = self._manager.block_size
        length = request.num_computed_tokens  # entries in the cache once this step ran
        live = length - (state.tail_start - len(state.front)) * bs
        if not state.prefilled:
            if length < request.num_prompt_tokens:
                return None
            state.prefilled = True
        elif (live < (0 if cls.packs else state.budget) + self._recompress_every
              and not cls.retrieves):
            return None
        blocks = self._manager.req_to_blocks[request.request_id]
        last = (length - 1) // bs
        if not state.front:  # first compaction: a prefix other requests hold stays shared
            state.pinned = next((i for i, b in enumerate(blocks[:last]) if b.ref_cnt < 2), last)
        if cls.packs:
            return self._plan_packing(request, state, blocks, last, length)
        if cls.retrieves:
            return self._plan_offload(request, state, blocks, last, length, cls)
        pinned = state.pinned
        region = (state.front or blocks[:pinned])[pinned:] + blocks[state.tail_start or pinned:last]
        tail_tokens = length - last * bs
        keep = max(0, self._budget_blocks(state, tail_tokens))
        if keep >= len(region):
            return None
        pool = self._manager.block_pool
        if pool.get_num_free_blocks() < keep:
            self._stats.add(state.config.name, skipped=1)
            return None
        targets = pool.get_new_blocks(keep)
        blocks[pinned:pinned + keep] = targets
        blocks[pinned + keep:last] = [pool.null_block] * (last - pinned - keep)
        pool.free_blocks(reversed(region))
        # Blocks filled from now on hold KV computed under compressed attention.
        self._manager.num_cached_block[request.request_id] = sys.maxsize
        state.front, state.tail_start = blocks[:pinned + keep], last
        self._stats.add(state.config.name, compactions=1, tokens_before=live,
                        tokens_kept=(pinned + keep) * bs + tail_tokens,
                        blocks_before=len(region), blocks_freed=len(region) - keep)
        return Compaction(tuple(b.block_id for b in region), blocks[last].block_id,
                          tail_tokens, tuple(b.block_id for b in targets))

    def _plan_offload(self, request, state: _Request, blocks, last: int, length: int,
                      cls) -> Compaction | None:
        """Move the full blocks between the sinks (and a pinned prefix) and the recent
        window out to the offload tier, as each leaves the window."""
        keep_front = max(state.pinned, cls.sink_blocks)
        start = state.tail_start or keep_front
        end = last - cls.recent_blocks
        if end <= start:
            return None
        pool = self._manager.block_pool
        sources = blocks[start:end]
        blocks[start:end] = [pool.null_block] * (end - start)
        pool.free_blocks(reversed(sources))
        self._manager.num_cached_block[request.request_id] = sys.maxsize
        state.front, state.tail_start = blocks[:keep_front], end
        tokens = len(sources) * self._manager.block_size
        self._stats.add(state.config.name, compactions=1, tokens_before=tokens, tokens_kept=tokens,
                        blocks_before=len(sources), blocks_freed=len(sources))
        return Compaction(tuple(b.block_id for b in sources), blocks[last].block_id,
                          length - last * self._manager.block_size, (), start)

    def _budget_blocks(self, state: _Request, exact: int) -> int:
        """Whole blocks of survivors the budget leaves after `exact` entries that stay in
        place and the pinned prefix."""
        return round((state.budget - exact) / self._manager.block_size) - state.pinned

    def _plan_packing(self, request, state: _Request, blocks, last: int,
                      length: int) -> Compaction | None:
        """Quantize the full in-place blocks before `last` into the byte stream, except
        those holding the newest `residual` entries (they stay in full precision). A
        policy with a budget first chooses, once, the survivors among the prompt's blocks:
        as many whole groups as the budget leaves after the entries that stay in place."""
        bs, pinned = self._manager.block_size, state.pinned
        start = state.tail_start or pinned
        end = min(last, (length - state.cls.residual) // bs)
        sources = blocks[start:end]
        packed = list(state.front[pinned:])
        fmt = state.cls.format(self._head_size, bs)
        new_groups = len(sources)
        if state.budget and not state.packed_groups:
            new_groups = min(new_groups, max(1, self._budget_blocks(state, length - end * bs)))
        groups = state.packed_groups + new_groups
        need = fmt.blocks_for(groups, self._head_block_bytes) - len(packed)
        if not sources or need >= len(sources):
            return None
        pool = self._manager.block_pool
        if pool.get_num_free_blocks() < need:
            self._stats.add(state.config.name, skipped=1)
            return None
        targets = pool.get_new_blocks(need) if need > 0 else []
        packed += targets
        blocks[pinned:pinned + len(packed)] = packed
        blocks[pinned + len(packed):end] = [pool.null_block] * (end - pinned - len(packed))
        pool.free_blocks(reversed(sources))
        self._manager.num_cached_block[request.request_id] = sys.maxsize
        state.front, state.packed_groups = blocks[:pinned + len(packed)], groups
        state.tail_start = end
        self._stats.add(state.config.name, compactions=1, tokens_before=len(sources) * bs,
                        tokens_kept=new_groups * bs, blocks_before=len(sources),
                        blocks_freed=len(sources) - need)
        keep = new_groups * bs if new_groups < len(sources) else 0
        return Compaction(tuple(b.block_id for b in sources), blocks[last].block_id,
                          length - last * bs, tuple(b.block_id for b in targets), keep=keep)
