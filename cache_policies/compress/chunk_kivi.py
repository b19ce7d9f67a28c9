"""Eviction, then quantization: at the end of prefill `chunkkv` chooses the prompt's
surviving chunks within the budget and KIVI packs only those, at 8 bits; the entries
generated afterwards are packed as `kivi8` packs them, none evicted. The two savings
multiply (a 0.4 budget at 1.9x fewer bytes per entry: 4.3-4.4x fewer bytes per prompt
token than the full cache, residual window included, at 101.0% / 98.1% of its score at
2k / 4k over three sample sets: BENCHMARKS.md, issue 5 section 1e), and each is the part
of its family that loses least here."""

from __future__ import annotations

from cache_policies.compress.kivi import KIVI8
from cache_policies.evict.chunkkv import ChunkKV


class ChunkKVKIVI8(ChunkKV, KIVI8):
    name = "chunkkv_kivi8"
    takes_budget = True  # KIVI alone takes none
    default_budget = 0.4
