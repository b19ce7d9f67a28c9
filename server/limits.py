"""Admission control: how many requests may wait for the engine before new ones get 429.

Waiting is estimated from two sides and the larger wins: the requests this server has
admitted beyond the engine's running slots (`max_num_seqs`; exact the moment a request
arrives), and the engine's own waiting count from its last scheduler stats (catches
requests held back by KV memory rather than by slots, but lags by one step).
"""

from __future__ import annotations

import contextlib

from vllm.v1.metrics.loggers import StatLoggerBase

from server import metrics
from server.errors import QueueFull


class _SchedulerStatsTap(StatLoggerBase):
    """A vLLM stat logger that hands the latest waiting count to an Admission."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
        if scheduler_stats is not None:
            self._admission.engine_waiting = (
                scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs
            )

    def log_engine_initialized(self) -> None:
        pass


class Admission:
    def __init__(self, max_queued_requests: int) -> None:
        self.max_queued = max_queued_requests
        self.max_num_seqs = 0  # known once the engine is configured
        self.in_flight = 0
        self.engine_waiting = 0

    def stat_logger_factory(self):
        """For `AsyncLLM(stat_loggers=[...])`: vLLM calls it as (vllm_config, engine_index)."""
        return lambda vllm_config, engine_index=0: _SchedulerStatsTap(self)

    def _engine_waiting(self) -> int:
        # The engine reports only while it works: an idle engine's last count is stale.
        return min(self.engine_waiting, self.in_flight)

    def waiting(self) -> int:
        return max(self.in_flight - self.max_num_seqs, self._engine_waiting(), 0)

    def admit(self, n: int = 1) -> Ticket:
        """Take room for `n` sequences, or raise QueueFull (429 with Retry-After)."""
        engine_waiting = self._engine_waiting()
        projected = max(
            self.in_flight + n - self.max_num_seqs,  # no free running slot left
            engine_waiting + n if engine_waiting else 0,  # engine already holding some back
        )
        if projected > self.max_queued:
            raise QueueFull(
                f"{self.waiting()} requests are already waiting for the engine (limit: "
                f"--max-queued-requests={self.max_queued}); retry after the Retry-After delay",
                headers={"Retry-After": "1"},
            )
        self.in_flight += n
        self._publish()
        return Ticket(self, n)

    def _release(self, n: int) -> None:
        self.in_flight -= n
        self._publish()

    def _publish(self) -> None:
        metrics.IN_FLIGHT.set(self.in_flight)
        metrics.QUEUE_WAITING.set(self.waiting())


class Ticket(contextlib.AbstractContextManager):
    """Held for as long as a request is in the engine (a stream: until it ends)."""

    def __init__(self, admission: Admission, n: int) -> None:
        self._admission, self._n = admission, n

    def release(self) -> None:
        if self._n:
            self._admission._release(self._n)
            self._n = 0

    def __exit__(self, *exc) -> None:
        self.release()
