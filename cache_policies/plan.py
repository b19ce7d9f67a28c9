"""What the scheduler tells the workers about a request under a KV policy, each step.

Carried on vLLM's `SchedulerOutput` as the attribute `longserve_kv` (a dict req_id ->
PolicyStep); it travels to the workers with the rest of that object (by reference, or
pickled by the multiprocess executor).

Layout of a compacted request (logical block index -> physical block):
    [front_0 .. front_{k-1}] [null ...] [blocks tail_start ... in place]
Every front block and every in-place block but the last is full, so the live entries
form one contiguous physical sequence: attention reads `front + table[tail_start:]`
with `seq_len - (tail_start - k) * block_size` entries, while new tokens keep their
logical positions (RoPE) and slots (vLLM's own slot mapping lands in the in-place part).

A packing policy (KIVI, CSKV) has the same layout, but its front after the `pinned` shared
prefix blocks holds `packed_groups` quantized groups of entries as one byte stream per KV
head (`cache_policies.compress.kivi`, `.cskv`); the kernel never reads those blocks as entries.
A retrieval policy with the offload tier keeps its sink (and pinned) blocks as the front;
logical blocks len(front) .. tail_start - 1 live in the tier (`cache_policies.offload`).
"""

from __future__ import annotations

from dataclasses import dataclass

from cache_policies.base import KVPolicyConfig

ATTRIBUTE = "longserve_kv"


@dataclass(frozen=True)
class Compaction:
    """Run the policy on this step's last queries and write the survivors of `sources`
    (full blocks, in order) into `targets` (fresh blocks); `tail` (holding `tail_tokens`
    entries, the newest) stays where it is. A packing policy appends the packed
    `sources` to its byte stream, which `targets` extend; with `keep`, only the `keep`
    entries per KV head that the policy chooses among them (a policy that evicts, then
    packs). A retrieval policy with the offload tier moves `sources`, logical blocks
    `start`.., out to the tier (no targets)."""

    sources: tuple[int, ...]
    tail: int
    tail_tokens: int
    targets: tuple[int, ...]
    start: int = 0
    keep: int = 0


@dataclass(frozen=True)
class PolicyStep:
    policy: KVPolicyConfig
    front: tuple[int, ...] = ()  # the layout this step's attention reads (before any
    tail_start: int = 0          # compaction in this same step)
    compaction: Compaction | None = None
    pinned: int = 0  # leading front blocks shared with other requests, kept as they are
    packed_groups: int = 0  # packing policies: groups in the stream (before `compaction`)

    @property
    def dead_blocks(self) -> int:
        return self.tail_start - len(self.front)
