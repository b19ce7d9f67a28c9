"""`chain_of_agents` (Zhang et al., NeurIPS 2024, arXiv:2406.02818): worker calls read
the long message's body in consecutive window-sized pieces, each handing its notes (the
communication unit) to the next; the request itself then runs as the manager, with the
body replaced by the last notes, and streams as usual. Usage counts every call."""

from __future__ import annotations

import asyncio
import uuid

from server.context.base import (
    Context,
    Strategy,
    join,
    message_text,
    split_long_text,
    with_content,
)
from server.errors import ContextLengthExceeded
from server.rag.chunking import chunk_document

NOTES_TOKENS = 256  # the communication unit's length

WORKER = (
    "{piece}\n\n"
    "Notes on the earlier parts of the text:\n{notes}\n\n"
    "Question: {question}\n\n"
    "Above is part {k} of {n} of a long text. Write notes that keep everything from the "
    "earlier notes and from this part that helps answer the question: exact names, numbers "
    "and facts. Do not answer yet."
)
MANAGER = "The text was too long to read at once; notes taken while reading it:\n{notes}"


class ChainOfAgents(Strategy):
    name = "chain_of_agents"

    @staticmethod
    def _pieces(ctx: Context, text: str) -> tuple[str, str, list[str], int]:
        """(head, question, the body's pieces, piece size): a worker's prompt holds its
        piece, the notes so far (up to NOTES_TOKENS) and leaves NOTES_TOKENS to write."""
        head, body, question = split_long_text(text, ctx)
        question = question or "Summarize the text."
        frame = len(ChainOfAgents._worker_ids(ctx, "", "", question, 99, 99))
        piece_tokens = ctx.max_model_len - frame - 2 * NOTES_TOKENS - 16
        if piece_tokens < 128:
            raise ContextLengthExceeded(
                f"chain_of_agents needs a window of at least {frame + 2 * NOTES_TOKENS + 144}"
                f" tokens for its worker prompts; this model's is {ctx.max_model_len}",
                param="messages")
        pieces = [c.text for c in chunk_document(0, body, ctx.tokenizer, piece_tokens)]
        return head, question, pieces, piece_tokens

    async def shorten(self, request, ctx: Context, index: int, prompt: int) -> dict:
        messages = request.messages
        head, question, pieces, piece_tokens = await asyncio.to_thread(
            self._pieces, ctx, message_text(messages[index]))
        notes, usage = "(none yet)", {"prompt_tokens": 0, "completion_tokens": 0}
        for k, piece in enumerate(pieces, 1):
            ids = self._worker_ids(ctx, piece, notes, question, k, len(pieces))
            notes, generated = await self._call(ctx, ids)
            usage["prompt_tokens"] += len(ids)
            usage["completion_tokens"] += generated
        candidate = with_content(messages, index, join(head, MANAGER.format(notes=notes),
                                                       question))
        request.messages = candidate
        return {"workers": len(pieces), "piece_tokens": piece_tokens,
                "notes_tokens": NOTES_TOKENS, "manager_prompt_tokens": ctx.count(candidate),
                "worker_usage": usage}

    @staticmethod
    def _worker_ids(ctx: Context, piece: str, notes: str, question: str, k: int,
                    n: int) -> list[int]:
        content = WORKER.format(piece=piece, notes=notes, question=question, k=k, n=n)
        return ctx.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=True, return_dict=False,
            add_generation_prompt=True)

    @staticmethod
    async def _call(ctx: Context, ids: list[int]) -> tuple[str, int]:
        """One worker: greedy, under the request's KV policy and attention."""
        from vllm import SamplingParams

        params = SamplingParams(temperature=0, max_tokens=NOTES_TOKENS,
                                extra_args={"longserve": ctx.engine_args or {}})
        final = None
        async for output in ctx.engine.generate({"prompt_token_ids": ids}, params,
                                                f"coa-{uuid.uuid4().hex}"):
            final = output
        completion = final.outputs[0]
        return completion.text.strip() or "(nothing relevant)", len(completion.token_ids)
