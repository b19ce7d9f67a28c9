"""`rag`: a prompt too long for the window is read as a document — the longest message's
body is chunked, the chunks closest to its question (the last paragraph) are expanded in
their order within what the window leaves, the rest left out (or, with
`rag: {"mode": "extractive"}`, cut to sentences). Compress-sense-expand, server/rag."""

from __future__ import annotations

import dataclasses

from server.context.base import (
    Context,
    Strategy,
    join,
    message_text,
    split_long_text,
    with_content,
)
from server.errors import ContextLengthExceeded, LongserveError
from server.rag.config import RagConfig
from server.rag.pipeline import Document, compress_sense_expand


class Rag(Strategy):
    name = "rag"

    def fit(self, request, ctx: Context, index: int, prompt: int) -> dict:
        messages = request.messages
        head, body, question = split_long_text(message_text(messages[index]), ctx)
        options = dict(getattr(request, "rag", None) or {})
        options.setdefault("mode", "drop")
        config = RagConfig.from_dict(options)
        if config.mode == "refrag":
            raise LongserveError("context_strategy rag takes rag modes drop and extractive; "
                                 "refrag applies to `documents`", param="rag")
        frame = ctx.count(with_content(messages, index, join(head, question)))
        budget = ctx.room - frame - 32  # document header and markers
        for _ in range(4):
            if budget < config.chunk_tokens:
                raise ContextLengthExceeded(
                    f"rag cannot fit this request: the rest of the prompt takes {frame} of the "
                    f"{ctx.room} tokens that leave room for {ctx.reserve} completion tokens",
                    param="messages")
            plan = compress_sense_expand(
                [Document("input", body)], question or body[-2000:],
                dataclasses.replace(config, expand_tokens=budget), ctx.tokenizer, ctx.encoder)
            candidate = with_content(messages, index, join(head, plan.context, question))
            fitted = ctx.count(candidate)
            if fitted <= ctx.room:
                request.messages = candidate
                return {"fitted_tokens": fitted, "rag": plan.provenance}
            budget -= fitted - ctx.room + 16
        raise ContextLengthExceeded("rag did not converge on a prompt that fits",
                                    param="messages")
