"""Admission control: what may wait for the engine before new requests get 429 or 503.

- Requests (`--max-queued-requests`). Waiting is estimated from two sides and the larger
  wins: the requests this server has admitted beyond the engine's running slots
  (`max_num_seqs`; exact the moment a request arrives), and the engine's own waiting
  count from its last scheduler stats (catches requests held back by KV memory rather
  than by slots, but lags by one step).
- Tokens (`--max-queued-tokens`): the prompt tokens of admitted requests that have no
  output yet (queued, or in prefill), counted once the prompt is tokenized and until the
  engine's first output for it. One request is always let into an empty queue, so a
  prompt larger than the limit still runs when nothing else waits.
- Time (`--queue-timeout`): a request with no output that long after it reached the engine
  is aborted there and answered 503 with Retry-After (for a stream: an error event).
- Per-API-key rate limits (server.ratelimit), charged here: a request when it arrives,
  its tokens once tokenized.

The ticket of the request being served is in `CURRENT_TICKET`, so the serving objects'
render step and engine calls (vLLM's code between them) find it without new arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
from contextvars import ContextVar

from vllm.v1.metrics.loggers import StatLoggerBase

from server import metrics
from server.errors import LongserveError, QueueFull, QueueTimeout
from server.ratelimit import ANONYMOUS, RateLimiter


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
    def __init__(self, max_queued_requests: int, max_queued_tokens: int = 0,
                 queue_timeout: float = 0, limiter: RateLimiter | None = None,
                 default_max_tokens: int = 2048) -> None:
        self.max_queued = max_queued_requests
        self.max_queued_tokens = max_queued_tokens  # 0: no limit
        self.queue_timeout = queue_timeout  # 0: none
        self.limiter = limiter or RateLimiter()
        # what a request without max_tokens may generate (server.openai.serving
        # .default_max_tokens settles it once the serving objects exist)
        self.default_max_tokens = default_max_tokens
        self.max_num_seqs = 0  # known once the engine is configured
        self.in_flight = 0
        self.engine_waiting = 0
        self.queued_tokens = 0

    @classmethod
    def from_settings(cls, settings) -> Admission:
        return cls(settings.max_queued_requests, settings.max_queued_tokens,
                   settings.queue_timeout,
                   RateLimiter(settings.rate_limit_rpm, settings.rate_limit_tpm,
                               settings.rate_limit_store),
                   settings.default_max_tokens)

    def stat_logger_factory(self):
        """For `AsyncLLM(stat_loggers=[...])`: vLLM calls it as (vllm_config, engine_index)."""
        return lambda vllm_config, engine_index=0: _SchedulerStatsTap(self)

    def _engine_waiting(self) -> int:
        # The engine reports only while it works: an idle engine's last count is stale.
        return min(self.engine_waiting, self.in_flight)

    def waiting(self) -> int:
        return max(self.in_flight - self.max_num_seqs, self._engine_waiting(), 0)

    def admit(self, n: int = 1, key: str = ANONYMOUS) -> Ticket:
        """Take room for `n` sequences, or raise QueueFull (429 with Retry-After); more
        than could ever be admitted at once is the client's mistake (400)."""
        if self.max_num_seqs and n > self.max_num_seqs + self.max_queued:
            raise LongserveError(
                f"n={n} asks for {n} sequences at once; this server runs "
                f"{self.max_num_seqs} and queues {self.max_queued} (--max-queued-requests): "
                "ask for fewer, or send several requests", param="n")
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
        return Ticket(self, n, key)

    def _check_queue(self, tokens: int) -> None:
        limit = self.max_queued_tokens
        if limit and self.queued_tokens and self.queued_tokens + tokens > limit:
            raise QueueFull(
                f"{self.queued_tokens} prompt tokens are already waiting for the engine and "
                f"this request brings {tokens} (limit: --max-queued-tokens={limit}); retry "
                "after the Retry-After delay", headers={"Retry-After": "1"})

    def _queue_tokens(self, tokens: int) -> None:
        self.queued_tokens += tokens
        self._publish()

    def _release(self, n: int, tokens: int) -> None:
        self.in_flight -= n
        self.queued_tokens -= tokens
        self._publish()

    def _publish(self) -> None:
        metrics.IN_FLIGHT.set(self.in_flight)
        metrics.QUEUE_WAITING.set(self.waiting())
        metrics.QUEUED_TOKENS.set(self.queued_tokens)


CURRENT_TICKET: ContextVar[Ticket | None] = ContextVar("longserve_ticket", default=None)


class Ticket(contextlib.AbstractContextManager):
    """Held for as long as a request is in the engine (a stream: until it ends)."""

    def __init__(self, admission: Admission, n: int, key: str = ANONYMOUS) -> None:
        self._admission, self._n, self.key = admission, n, key
        self._queued = 0  # prompt tokens counted in admission.queued_tokens
        self.failure: LongserveError | None = None  # why the engine call was given up

    async def charge_request(self) -> None:
        await self._admission.limiter.take(self.key, "requests", 1)

    async def enter_queue(self, prompt_tokens: list[int], max_model_len: int,
                          requested: int | None, choices: int = 1) -> None:
        """Once the prompts are tokenized: charge their tokens (prompt plus what may be
        generated) to the key and count the prompt tokens as queued."""
        admission, prompt = self._admission, sum(prompt_tokens)
        completion = sum(min(requested or admission.default_max_tokens, max_model_len - n)
                         for n in prompt_tokens) * choices
        admission._check_queue(prompt)  # before the charge: a refused request costs nothing
        await admission.limiter.take(self.key, "tokens", prompt + completion)
        admission._queue_tokens(prompt)
        self._queued += prompt

    def started(self) -> None:
        """The engine's first output for the request: its prompt is no longer queued."""
        if self._queued:
            self._admission._release(0, self._queued)
            self._queued = 0

    def release(self) -> None:
        self.started()
        if self._n:
            self._admission._release(self._n, 0)
            self._n = 0

    def __exit__(self, *exc) -> None:
        self.release()


class AdmittedEngine:
    """The engine as vLLM's serving objects see it: `generate` tells the request's ticket
    when the first output arrives and, under `--queue-timeout`, gives up on a request
    that has had none by then (closing vLLM's generator aborts it in the engine)."""

    def __init__(self, engine, admission: Admission) -> None:
        self._engine, self._admission = engine, admission

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def generate(self, *args, **kwargs):
        return self._watched(self._engine.generate(*args, **kwargs), CURRENT_TICKET.get())

    async def _watched(self, outputs, ticket: Ticket | None):
        timeout = self._admission.queue_timeout or None
        try:
            try:
                async with asyncio.timeout(timeout):
                    first = await anext(outputs)
            except StopAsyncIteration:
                return
            except TimeoutError:
                if timeout is None:  # not ours: no deadline was set
                    raise
                metrics.QUEUE_TIMEOUTS.inc()
                failure = QueueTimeout(
                    f"the engine had not started this request after {timeout:g} s "
                    "(--queue-timeout): the server is overloaded; retry later or on another "
                    "replica", headers={"Retry-After": "1"})
                if ticket is not None:
                    ticket.failure = failure
                raise failure from None
            if ticket is not None:
                ticket.started()
            yield first
            async for output in outputs:
                yield output
        finally:
            await outputs.aclose()
