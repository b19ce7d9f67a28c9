"""`/v1/chat/completions`, `/v1/completions`, `/v1/models`.

Each route validates the longserve extensions, fills in the server defaults, takes an
admission ticket, hands the request to vLLM's serving object and shapes the answer:
vLLM's response plus a `longserve` field saying what was applied.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator

import anyio
from fastapi import APIRouter, Depends, Request
from starlette.responses import JSONResponse, StreamingResponse
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.entrypoints.serve.utils.api_utils import with_cancellation

from server import metrics
from server.context.prepare import prepare_chat
from server.errors import LongserveError, UnsupportedMediaType, count_error, envelope
from server.limits import CURRENT_TICKET
from server.openai.protocol import (
    AttentionSpec,
    KVPolicySpec,
    LongserveChatCompletionRequest,
    LongserveCompletionRequest,
    LongserveFields,
)
from server.ratelimit import ANONYMOUS
from server.state import serving_or_503

router = APIRouter()


async def require_json(raw_request: Request) -> None:
    media_type = raw_request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaType(
            f"send the body as JSON with `Content-Type: application/json` (got "
            f"{media_type or 'no content type'})")


def _fill_defaults(request: LongserveFields, state) -> None:
    settings = state.settings
    if request.kv_policy is None:
        request.kv_policy = KVPolicySpec(name=settings.kv_policy, budget=settings.kv_budget)
    if request.context_strategy is None:
        request.context_strategy = settings.context_strategy
    _fill_attention(request, state)
    cache_dtype = getattr(state.vllm_args, "kv_cache_dtype", "auto")
    if request.kv_policy.name != "full" and cache_dtype not in ("auto", None):
        raise LongserveError(
            f"kv_policy {request.kv_policy.name!r} needs the KV cache in the model's dtype; "
            f"this server runs vLLM's quantized cache (--kv-cache-dtype {cache_dtype}) and "
            "serves `full` only (for a quantized cache with policies, use kivi8/kivi4)",
            param="kv_policy")
    if request.kv_policy.name != "full" and _is_hybrid(state):
        raise LongserveError(
            f"kv_policy {request.kv_policy.name!r} needs a model whose layers all use softmax "
            "attention (one paged KV cache); this model mixes in recurrent layers "
            "(e.g. lightning attention) and serves `full` only", param="kv_policy")
    if request.kv_policy.name != "full" and not _cpu_only_policy_ok(request.kv_policy.name):
        raise LongserveError(
            f"kv_policy {request.kv_policy.name!r} attends through longserve's CPU path and is "
            "not available on this platform yet; evict/merge policies are", param="kv_policy")


def _fill_attention(request: LongserveFields, state) -> None:
    """The request's attention, its sparse parameters over the server's `--sparse-config`."""
    settings = state.settings
    spec = request.attention or AttentionSpec(name=settings.attention)
    if spec.name == "sparse":
        spec = AttentionSpec(name="sparse", **{**settings.sparse_config, **spec.params()})
        from vllm.platforms import current_platform

        if not (current_platform.is_cpu() or current_platform.is_cuda()):
            raise LongserveError("sparse attention runs on CPU and CUDA engines only; use dense",
                                 param="attention")
        if getattr(state.vllm_args, "kv_cache_dtype", "auto") not in ("auto", None):
            raise LongserveError("sparse attention needs the KV cache in the model's dtype "
                                 "(this server runs a quantized KV cache)", param="attention")
        if spec.params().get("columns") and current_platform.is_cpu():
            raise LongserveError("columns (single vertical key positions) need the Triton "
                                 "kernel; the CPU path attends verticals as whole KV blocks: "
                                 "set columns to 0", param="attention")
    request.attention = spec


def _is_hybrid(state) -> bool:
    config = getattr(getattr(state, "engine", None), "vllm_config", None)
    return bool(config and config.model_config.is_hybrid)


def _cpu_only_policy_ok(name: str) -> bool:
    """Quantizing and retrieval policies read the CPU cache layout only (for now)."""
    from vllm.platforms import current_platform

    from cache_policies.registry import policy_class

    cls = policy_class(name)
    return current_platform.is_cpu() or not (cls.packs or cls.retrieves)


def _add_usage(usage: dict | None, extra: dict | None) -> None:
    """Count calls made for the request before its own (chain-of-agents workers)."""
    if usage and extra:
        usage["prompt_tokens"] += extra["prompt_tokens"]
        usage["completion_tokens"] += extra["completion_tokens"]
        usage["total_tokens"] += extra["prompt_tokens"] + extra["completion_tokens"]


def _shape_event(chunk: str, applied: dict | None, extra_usage: dict | None) -> str:
    """Add the `longserve` field (when given) and the extra usage to one SSE event."""
    payload = chunk.removeprefix("data: ").strip()
    if not chunk.startswith("data: ") or payload == "[DONE]":
        return chunk
    if applied is None and extra_usage is None:
        return chunk
    event = json.loads(payload)
    if "error" not in event and applied is not None:
        event["longserve"] = applied
    _add_usage(event.get("usage"), extra_usage)
    return f"data: {json.dumps(event, separators=(',', ':'))}\n\n"


async def _stream(events: AsyncGenerator[str, None], ticket, applied: dict,
                  extra_usage: dict | None):
    """Relay vLLM's SSE events; the first carries `longserve`. If the client goes away
    mid-stream, closing vLLM's generator aborts the request in the engine."""
    finished = False
    try:
        first = True
        async for event in events:
            if ticket.failure is not None and event.startswith("data: {"):
                # given up before any output (--queue-timeout): vLLM's event would say 400
                failure = ticket.failure
                count_error(failure.status, failure.type)
                error = envelope(failure.message, failure.type, failure.status)
                event = f"data: {json.dumps(error)}\n\n"
            yield _shape_event(event, applied if first else None, extra_usage)
            first = False
        finished = True
    finally:
        ticket.release()
        if not finished:
            metrics.DISCONNECTS.labels(stream="true").inc()
        await events.aclose()


class _ClosingStreamingResponse(StreamingResponse):
    """Closes its body when the response ends for any reason. Starlette cancels the
    sending task when the client disconnects; if that lands while it waits in `send`
    rather than on the next event, the body generator is left suspended and its cleanup
    (engine abort, ticket, disconnect count) would wait for the garbage collector."""

    async def stream_response(self, send) -> None:
        try:
            await super().stream_response(send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()


async def _serve(raw_request: Request, request: LongserveFields, endpoint: str, create):
    state = raw_request.app.state
    serving = serving_or_503(state)
    _fill_defaults(request, state)
    key = getattr(raw_request.state, "api_key_id", ANONYMOUS)
    ticket = state.admission.admit(getattr(request, "n", None) or 1, key)
    CURRENT_TICKET.set(ticket)  # this task's: the render step and the engine call read it
    try:
        await ticket.charge_request()
        if isinstance(request, LongserveChatCompletionRequest):
            request._prepared = await prepare_chat(request, state)
        result = await create(serving)
    except BaseException:
        ticket.release()
        raise
    if isinstance(result, ErrorResponse):
        ticket.release()
        if asyncio.current_task().cancelling():  # with_cancellation: the client left
            metrics.DISCONNECTS.labels(stream="false").inc()
        count_error(result.error.code, result.error.type)
        return JSONResponse(result.model_dump(), status_code=result.error.code)
    applied = request.applied()
    extra_usage = applied.get("context", {}).get("worker_usage")
    metrics.REQUESTS.labels(
        endpoint=endpoint,
        kv_policy=applied["kv_policy"]["name"],
        context_strategy=applied["context_strategy"],
    ).inc()
    if isinstance(result, AsyncGenerator):
        return _ClosingStreamingResponse(_stream(result, ticket, applied, extra_usage),
                                         media_type="text/event-stream")
    ticket.release()
    body = result.model_dump()
    _add_usage(body.get("usage"), extra_usage)
    return JSONResponse({**body, "longserve": applied})


@router.post(
    "/v1/chat/completions",
    dependencies=[Depends(require_json)],
    response_model=None,
)
@with_cancellation
async def create_chat_completion(request: LongserveChatCompletionRequest, raw_request: Request):
    return await _serve(
        raw_request, request, "chat",
        lambda s: s.chat.create_chat_completion(request, raw_request),
    )


@router.post(
    "/v1/completions",
    dependencies=[Depends(require_json)],
    response_model=None,
)
@with_cancellation
async def create_completion(request: LongserveCompletionRequest, raw_request: Request):
    return await _serve(
        raw_request, request, "completion",
        lambda s: s.completion.create_completion(request, raw_request),
    )


@router.get("/v1/models")
async def list_models(raw_request: Request):
    serving = serving_or_503(raw_request.app.state)
    return JSONResponse((await serving.models.show_available_models()).model_dump())
