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
DISCONNECTS = Counter(
    "longserve_client_disconnects", "requests aborted because the client went away",
    ["stream"],
)
