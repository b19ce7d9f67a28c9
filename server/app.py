"""The app factory. The HTTP server comes up at once (so /health and /ready answer while
the model loads); the engine starts in the background and a watchdog turns engine death
into a false /ready and a non-zero exit."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import FastAPI

from server import errors, metrics
from server.limits import Admission
from server.middleware import APIKeyMiddleware, BodySizeLimitMiddleware
from server.rag.encoder import Encoder
from server.rag.store import CachedEncoder, make_store
from server.settings import Settings
from server.state import Phase, set_phase

logger = logging.getLogger("longserve")

WATCHDOG_INTERVAL_S = 1.0
# After the engine dies, /ready answers false this long before the process exits, so
# probes and load balancers see why the replica went away.
DEATH_EXIT_DELAY_S = 2.0


async def _start_engine(app: FastAPI) -> None:
    from vllm import __version__ as vllm_version

    from attention_backends.registry import register as register_attention
    from server import engine as wiring
    from server.openai.serving import build_serving
    from server.vllm_compat import start_output_handler

    state = app.state
    try:
        model, name = await asyncio.to_thread(wiring.resolve_model, state.settings)
        state.vllm_args = wiring.vllm_namespace(state.settings, model, name, state.vllm_extra)
        wiring.export_policy_env(state.settings)
        if state.settings.afd_role == "attention":
            state.afd = wiring.start_afd(state.settings)
        # AsyncLLM's constructor blocks until the engine core is up; in a thread, so this
        # process keeps answering /health and /ready meanwhile.
        state.engine = await asyncio.to_thread(
            wiring.create_engine, state.vllm_args, [state.admission.stat_logger_factory()])
        start_output_handler(state.engine)
        state.admission.max_num_seqs = state.engine.vllm_config.scheduler_config.max_num_seqs
        state.serving = await build_serving(state.engine, state.vllm_args, state.admission)
        if state.settings.cskv:  # bases of another model would silently serve garbage
            from cache_policies.compress.cskv import load

            config = state.engine.model_config
            load(state.settings.cskv).check_model(
                config.hf_text_config.num_hidden_layers, config.get_total_num_kv_heads(),
                config.get_head_size())
        await asyncio.to_thread(state.chunk_encoder.encoder.load)
        if state.settings.rag_projection:
            from server.rag.projection import load_projection

            state.rag_projection = load_projection(
                state.settings.rag_projection, state.chunk_encoder.name,
                state.engine.model_config.get_hidden_size())
    except (Exception, SystemExit):  # SystemExit: vLLM's argument parser rejected a flag
        logger.exception("the engine failed to start")
        _die(app)
        return
    metrics.BUILD_INFO.labels(
        version=app.version, vllm_version=vllm_version,
        attention_backend=register_attention() or "vllm-default",
    ).set(1)
    # As `vllm serve` does after start-up: the engine's many long-lived objects leave the
    # collector's view, so collections while serving scan only per-request garbage.
    from vllm.utils.gc_utils import freeze_gc_heap

    freeze_gc_heap()
    set_phase(state, Phase.READY)
    logger.info("ready: serving %s", name)
    await asyncio.gather(_watch_engine(app), _log_stats(app))


async def _watch_engine(app: FastAPI) -> None:
    while app.state.phase is not Phase.DEAD:
        if app.state.engine.errored:
            logger.error("the engine died; /ready is now false and the server exits")
            set_phase(app.state, Phase.DEAD)
            await asyncio.sleep(DEATH_EXIT_DELAY_S)
            _die(app)
        await asyncio.sleep(WATCHDOG_INTERVAL_S)


async def _log_stats(app: FastAPI) -> None:
    """As `vllm serve` does: vLLM's periodic stats line (throughput, requests running and
    waiting, KV cache usage) every VLLM_LOG_STATS_INTERVAL seconds, unless the server was
    started with --disable-log-stats."""
    from vllm import envs

    if getattr(app.state.vllm_args, "disable_log_stats", False):
        return
    while app.state.phase is not Phase.DEAD:
        await asyncio.sleep(envs.VLLM_LOG_STATS_INTERVAL)
        await app.state.engine.do_log_stats()


def _die(app: FastAPI) -> None:
    """Mark the engine dead and make the process exit with status 1."""
    set_phase(app.state, Phase.DEAD)
    app.state.exit_code = 1
    server = getattr(app.state, "server", None)
    if server is not None:
        server.should_exit = True


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI):
    task = asyncio.create_task(_start_engine(app))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if app.state.engine is not None:
            app.state.engine.shutdown()


def build_app(settings: Settings, vllm_extra: list[str] | None = None) -> FastAPI:
    from importlib.metadata import version

    from server.openai.routes import router as openai_router
    from server.ops import router as ops_router

    app = FastAPI(
        title="longserve",
        version=version("longserve"),
        summary="OpenAI-compatible long-context model server on vLLM",
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.vllm_extra = vllm_extra or []
    app.state.engine = None
    app.state.afd = None  # the AFD monitor, on an attention server
    app.state.serving = None
    app.state.exit_code = 0
    app.state.admission = Admission.from_settings(settings)
    app.state.rag_projection = None
    app.state.chunk_encoder = CachedEncoder(Encoder(), make_store(settings.chunk_store),
                                            on_lookup=metrics.record_encoder_lookup)
    set_phase(app.state, Phase.LOADING)
    app.include_router(openai_router)
    app.include_router(ops_router)
    errors.install(app)
    # The last added runs first: the size limit, then auth, then the routes.
    if settings.api_key is not None:
        app.add_middleware(APIKeyMiddleware, api_keys=settings.api_keys())
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    return app
