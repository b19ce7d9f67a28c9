"""Before vLLM renders a chat request: put its `documents` in the prompt through the RAG
path, then run its context strategy. Both may rewrite `request.messages`; what they did
is returned for the response's `longserve` field."""

from __future__ import annotations

import asyncio

from server import metrics
from server.context.base import Context, message_text, with_content
from server.context.registry import get_strategy
from server.errors import LongserveError
from server.rag.config import RagConfig
from server.rag.pipeline import (
    Document,
    chunk_documents,
    compress_sense_expand,
    documents_message,
)
from server.rag.splice import Markers, Splice


def context_for(request, state) -> Context:
    tokenizer = state.engine.tokenizer
    prefixed = bool(getattr(request, "continue_final_message", False))
    return Context(
        tokenizer=tokenizer,
        max_model_len=state.engine.model_config.max_model_len,
        requested_tokens=request.requested_tokens(),
        template_kwargs={"add_generation_prompt": not prefixed and request.add_generation_prompt,
                         "continue_final_message": prefixed},
        engine=state.engine,
        encoder=state.chunk_encoder,
        engine_args=request.engine_args(),
        projection=getattr(state, "rag_projection", None),
    )


def _last_user(messages: list[dict]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if isinstance(messages[i], dict) and messages[i].get("role") == "user":
            if message_text(messages[i]) is None:
                raise LongserveError("documents go before the last user message, which must "
                                     "be text", param="documents")
            return i
    raise LongserveError("documents need a user message holding the question",
                         param="documents")


def insert_documents(request, ctx: Context, max_tokens: int) -> dict:
    """Compress-sense-expand the documents against the last user message, and put the
    result in front of it."""
    index = _last_user(request.messages)
    question = message_text(request.messages[index])
    documents = [Document(str(i), d) if isinstance(d, str) else Document(d.name or str(i), d.text)
                 for i, d in enumerate(request.documents)]
    config = RagConfig.from_dict(request.rag or {})
    refrag = config.mode == "refrag"
    if refrag and ctx.projection is None:
        raise LongserveError("rag mode refrag needs a server started with --rag-projection "
                             "DIR (a projection trained by `longserve train refrag`)",
                             param="rag")
    chunks = chunk_documents(documents, ctx.tokenizer, config.chunk_tokens)
    tokens = sum(c.tokens for c in chunks)
    if tokens > max_tokens:
        raise LongserveError(
            f"the documents hold {tokens} tokens; this server takes at most {max_tokens} per "
            "request (--rag-max-tokens)", param="documents")
    markers = Markers() if refrag else None
    plan = compress_sense_expand(documents, question, config, ctx.tokenizer, ctx.encoder,
                                 chunks=chunks, marker=markers)
    if refrag:  # the rows replace the markers once vLLM has rendered the prompt
        request._splices = [Splice(markers.text(j), ctx.projection.rows(plan.vectors[run]))
                            for j, run in enumerate(plan.runs)]
        plan.provenance["compressed_rows"] = sum(len(s.rows) for s in request._splices)
    request.messages = with_content(request.messages, index,
                                    documents_message(plan.context, question))
    request.documents = None  # in the prompt now; not for the chat template
    metrics.record_rag(plan.provenance)
    return plan.provenance


async def prepare_chat(request, state) -> dict:
    """{"rag": provenance (when documents came), "context": what the strategy did (every
    strategy but `reject`)}."""
    ctx = context_for(request, state)
    out = {}
    if request.documents is not None:
        out["rag"] = await asyncio.to_thread(insert_documents, request, ctx,
                                             state.settings.rag_max_tokens)
    elif request.rag is not None and request.context_strategy != "rag":
        raise LongserveError("`rag` options apply to `documents`, or to context_strategy "
                             "`rag`; this request has neither", param="rag")
    strategy = get_strategy(request.context_strategy)
    applied = await strategy.apply(request, ctx)
    if applied is not None and applied["changed"] and request._splices:
        raise LongserveError(  # a cut through the refrag markers would misplace the rows
            f"the refrag prompt does not fit the window and context_strategy "
            f"{strategy.name} cannot shorten it; lower rag.expand or use rag mode drop",
            param="rag")
    if applied is not None:  # `reject` has nothing to report before vLLM counts
        out["context"] = applied
        if applied["changed"]:
            metrics.CONTEXT_APPLIED.labels(strategy=strategy.name).inc()
    return out
