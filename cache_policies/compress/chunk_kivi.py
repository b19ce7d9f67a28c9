"""Eviction, then quantization: at the end of prefill `chunkkv` chooses the prompt's
surviving chunks within the budget and KIVI packs only those, at 8 bits; the entries
generated afterwards are packed as `kivi8` packs them, none evicted. The two savings
multiply (a 0.4 budget at 1.9x fewer bytes per entry: about 4x fewer bytes per token
than the full cache), and each is the part of its family that loses least here:
`chunkkv` at 0.5 and `kivi8` stay within noise of the full cache (BENCHMARKS.md)."""

from __future__ import annotations

from cache_policies.compress.kivi import KIVI8
from cache_policies.evict.chunkkv import ChunkKV


class ChunkKVKIVI8(ChunkKV, KIVI8):
    name = "chunkkv_kivi8"
    takes_budget = True  # KIVI alone takes none
    default_budget = 0.4
