"""longserve's own Prometheus metrics (`longserve_*`), beside vLLM's `vllm:*` ones in the
same default registry, so one scrape of `/metrics` gets both."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

BUILD_INFO = Gauge(
    "longserve_build_info", "longserve build; value is always 1",
    ["version", "vllm_version", "attention_backend"],
)
READY = Gauge("longserve_ready", "1 when the engine is loaded and serving, else 0")
REQUESTS = Counter(
    "longserve_requests", "requests admitted to the engine",
    ["endpoint", "kv_policy", "context_strategy"],
)
ERRORS = Counter(
    "longserve_request_errors", "error responses sent, by HTTP status and error type",
    ["status", "type"],
)
IN_FLIGHT = Gauge("longserve_requests_in_flight", "admitted requests not yet finished")
QUEUE_WAITING = Gauge(
    "longserve_queue_waiting", "requests waiting for an engine slot (admission's estimate)")
QUEUED_TOKENS = Gauge(
    "longserve_queued_prompt_tokens",
    "prompt tokens of admitted requests that have no output yet (queued or in prefill)")
QUEUE_TIMEOUTS = Counter(
    "longserve_queue_timeouts", "requests given up because no output came within "
    "--queue-timeout")
RATE_LIMITED = Counter(
    "longserve_rate_limited", "requests refused by a per-key rate limit, by key id (a hash, "
    "never the key) and limit", ["key", "limit"])
RATE_LIMIT_STORE_ERRORS = Counter(
    "longserve_rate_limit_store_errors", "requests let through because the rate limit "
    "store (Redis) could not be reached")
DISCONNECTS = Counter(
    "longserve_client_disconnects", "requests aborted because the client went away",
    ["stream"],
)
CONTEXT_APPLIED = Counter(
    "longserve_context_strategy_applied",
    "requests a context strategy shortened to fit the window", ["strategy"])
RAG_REQUESTS = Counter("longserve_rag_requests", "chat requests that brought documents")
RAG_CHUNKS = Counter(
    "longserve_rag_chunks", "document chunks, by what the RAG path did with them",
    ["outcome"])
RAG_ENCODER_CACHE = Counter(
    "longserve_rag_encoder_cache", "distinct texts looked up in the chunk store, by result",
    ["result"])


def record_rag(provenance: dict) -> None:
    RAG_REQUESTS.inc()
    expanded = len(provenance["expanded"])
    RAG_CHUNKS.labels(outcome="expanded").inc(expanded)
    RAG_CHUNKS.labels(outcome="compressed").inc(provenance["compressed_chunks"])
    RAG_CHUNKS.labels(outcome="dropped").inc(provenance["dropped_chunks"])


def record_encoder_lookup(hits: int, encoded: int) -> None:
    RAG_ENCODER_CACHE.labels(result="hit").inc(hits)
    RAG_ENCODER_CACHE.labels(result="miss").inc(encoded)


def _counter_families(prefix: str, label: str, docs: dict[str, str],
                      rows: dict[str, dict[str, int]]):
    """One Prometheus counter per field in `docs`, named `prefix + field`, one sample per
    key of `rows` (a policy or a method)."""
    from prometheus_client.core import CounterMetricFamily

    for field, doc in docs.items():
        family = CounterMetricFamily(prefix + field, doc, labels=[label])
        for key, row in sorted(rows.items()):
            family.add_metric([key], row.get(field, 0))
        yield family


class KVPolicyCollector:
    """Per-policy compression counters, read at scrape time from the file the engine
    core's scheduler keeps (`cache_policies.stats`)."""

    COUNTERS = {
        "requests": "requests admitted to the engine under the policy",
        "compactions": "times the policy ran and gave blocks back",
        "skipped": "compactions skipped for want of free blocks for the survivors",
        "tokens_before": "live KV entries (tokens) before each compaction",
        "tokens_kept": "KV entries (tokens) kept by each compaction",
        "blocks_before": "KV cache blocks each compaction worked on",
        "blocks_freed": "KV cache blocks given back to vLLM's block pool",
    }

    def collect(self):
        import os

        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from cache_policies import stats

        path = os.environ.get(stats.ENV)
        rows = stats.read(path) if path else {}
        yield from _counter_families("longserve_kv_", "policy", self.COUNTERS, rows)
        freed = CounterMetricFamily(
            "longserve_kv_tokens_freed", "KV entries (tokens) dropped or merged away",
            labels=["policy"])
        for policy, row in sorted(rows.items()):
            freed.add_metric([policy], row.get("tokens_before", 0) - row.get("tokens_kept", 0))
        yield freed
        ratio = GaugeMetricFamily(
            "longserve_kv_compression_ratio",
            "KV entries kept / entries before, over every compaction so far", labels=["policy"])
        for policy, row in sorted(rows.items()):
            if row.get("tokens_before"):
                ratio.add_metric([policy], row["tokens_kept"] / row["tokens_before"])
        yield ratio
        memory = GaugeMetricFamily(
            "longserve_kv_memory_ratio",
            "KV blocks held after / before, over every compaction so far (quantizing "
            "policies keep every entry in fewer blocks)", labels=["policy"])
        for policy, row in sorted(rows.items()):
            if row.get("blocks_before"):
                memory.add_metric([policy], 1 - row["blocks_freed"] / row["blocks_before"])
        yield memory
        yield from _counter_families(
            "longserve_kv_retrieval_pages_", "policy",
            {"attended": "16-entry KV pages attended per KV head in retrieval decode steps, "
                         "summed over layers and steps",
             "candidates": "KV pages the request held in those steps, per KV head, summed "
                           "over layers and steps"},
            stats.read_retrieval(path) if path else {})

    def describe(self):
        return []


class WorkerCountersCollector:
    """Counters the engine's workers keep (`cache_policies.stats.worker_stats`), summed
    over workers at scrape time: one Prometheus counter per field, `prefix + field`, one
    sample per key under `label`. `module` names where the counters' KIND and FIELDS are
    defined (imported at the first scrape, not with this module)."""

    def __init__(self, module: str, prefix: str, label: str, docs: dict[str, str]) -> None:
        self.module, self.prefix, self.label, self.docs = module, prefix, label, docs

    def collect(self):
        import importlib
        import os

        from cache_policies import stats

        counters = importlib.import_module(self.module)
        path = os.environ.get(stats.ENV)
        yield from _counter_families(
            self.prefix, self.label, self.docs,
            stats.read_workers(path, counters.KIND, counters.FIELDS) if path else {})

    def describe(self):
        return []


WORKER_COUNTERS = [
    WorkerCountersCollector(
        "attention_backends.sparse.stats", "longserve_sparse_", "method",
        {"chunks": "prefill chunks that ran sparse attention (per layer)",
         "tokens": "query tokens of those chunks (per layer)",
         "pairs_attended": "query-key pairs computed by sparse prefill, over heads and layers",
         "pairs_causal": "query-key pairs dense causal attention would have computed"}),
    WorkerCountersCollector(
        "attention_backends.mfa", "longserve_mfa_decode_", "route",
        {"tokens": "decode tokens attended by the shared-KV-head route (one read of K/V for "
                   "all query heads), summed over layers"}),
    WorkerCountersCollector(
        "server.afd", "longserve_afd_", "direction",
        {"exchanges": "layer FFN calls to the FFN workers",
         "tokens": "tokens carried by those calls, summed over layers",
         "bytes": "bytes of hidden states moved (to_ffn: to every FFN shard; from_ffn: their "
                  "outputs)"}),
]


def _register_kv_collector() -> None:
    from prometheus_client import REGISTRY

    REGISTRY.register(KVPolicyCollector())
    for collector in WORKER_COUNTERS:
        REGISTRY.register(collector)


_register_kv_collector()
