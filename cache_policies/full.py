"""`full`: keep every KV entry (vLLM's own behaviour; the reference for lossy policies)."""

from __future__ import annotations

from cache_policies.base import KVPolicy


class FullCache(KVPolicy):
    name = "full"
    takes_budget = False
