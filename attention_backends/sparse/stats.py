"""Sparse prefill counters, per method, kept in each worker (see cache_policies.stats)."""

from cache_policies.stats import worker_stats

KIND = "sparse"
FIELDS = ("chunks", "tokens", "pairs_attended", "pairs_causal")
SPARSE_STATS = worker_stats(KIND, FIELDS)
