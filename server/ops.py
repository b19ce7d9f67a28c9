"""Operational routes: `/health` (liveness), `/ready` (readiness), `/metrics`, `/info`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.responses import JSONResponse, Response

from cache_policies.registry import policy_names
from server import metrics
from server.context.registry import strategy_names
from server.engine import deployment_attention
from server.state import Phase, afd_problem, serving_or_503

router = APIRouter()


@router.get("/health")
async def health(request: Request):
    """200 while the process can serve or is still loading; 503 once the engine died."""
    dead = request.app.state.phase is Phase.DEAD
    return JSONResponse({"status": "dead" if dead else "alive"}, status_code=503 if dead else 200)


@router.get("/ready")
async def ready(request: Request):
    """200 only when the engine is loaded and accepting requests."""
    phase = request.app.state.phase
    if phase is Phase.READY and (problem := afd_problem(request.app.state)) is not None:
        return JSONResponse({"status": "ffn-unavailable", "detail": problem}, status_code=503)
    return JSONResponse(
        {"status": phase.value}, status_code=200 if phase is Phase.READY else 503)


@router.get("/metrics")
async def prometheus_metrics(request: Request):
    """vLLM's `vllm:*` metrics and longserve's `longserve_*`, Prometheus text format.
    `longserve_ready` says what /ready says at the moment of the scrape (an AFD attention
    server whose FFN workers are gone is not ready, though its engine is loaded)."""
    state = request.app.state
    metrics.READY.set(1 if state.phase is Phase.READY and afd_problem(state) is None else 0)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def _cskv(path: str | None) -> dict | None:
    if not path:
        return None
    from cache_policies.compress.cskv import load

    art = load(path)
    return {"path": path, "key_rank": art.ranks[0], "value_rank": art.ranks[1],
            "head_dim": art.head_dim, "calibration": art.meta.get("calibration")}


def _projection(projection, path: str | None) -> dict | None:
    if projection is None:
        return None
    meta = projection.meta
    return {"path": path, "encoder": meta.encoder, "model": meta.model,
            "vectors_per_chunk": meta.vectors, "chunk_tokens": meta.chunk_tokens,
            "held_out_loss": meta.training.get("held_out_loss")}


@router.get("/info")
async def info(request: Request):
    """What this server runs: model, limits, registered policies and strategies, and the
    attention backend each engine worker's layers use (asked of the workers live)."""
    state = request.app.state
    serving_or_503(state)
    settings = state.settings
    config = state.engine.vllm_config
    workers = await state.engine.collective_rpc("longserve_attention_report")
    return {
        "version": request.app.version,
        "model": config.model_config.model,
        "served_model_name": config.model_config.served_model_name,
        "max_model_len": config.model_config.max_model_len,
        "max_num_seqs": config.scheduler_config.max_num_seqs,
        "kv_cache_memory_bytes": config.cache_config.kv_cache_memory_bytes,
        "block_size": config.cache_config.block_size,
        "kv_policies": policy_names(),
        "context_strategies": strategy_names(),
        "defaults": {
            "kv_policy": {"name": settings.kv_policy, "budget": settings.kv_budget},
            "attention": deployment_attention(settings).applied(),
            "context_strategy": settings.context_strategy,
        },
        "limits": {
            "max_request_bytes": settings.max_request_bytes,
            "max_queued_requests": settings.max_queued_requests,
            # the setting, or the cap of a user's own max_new_tokens override
            "default_max_tokens": state.admission.default_max_tokens,
            "rag_max_tokens": settings.rag_max_tokens,
        },
        "chunk_store": "memory" if settings.chunk_store == "memory" else "redis",
        "rag_projection": _projection(state.rag_projection, settings.rag_projection),
        "cskv": _cskv(settings.cskv),
        "attention": workers,
    }
