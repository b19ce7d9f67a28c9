"""What every context strategy shares: the request's chat as text and token counts, the
long message (the one a strategy shortens), and the final fit check every request passes
after its strategy ran (nothing is cut silently: what still does not fit is a 400)."""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass
from typing import Any

from server.errors import ContextLengthExceeded, LongserveError

# Completion tokens a strategy leaves room for when the request sets no max_tokens.
DEFAULT_RESERVE = 256


def message_text(message: dict) -> str | None:
    """A message's content as one string; None when it holds anything but text (or is not
    an OpenAI-format message: vLLM also takes Harmony message objects)."""
    if not isinstance(message, dict):
        return None
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
            isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(p.get("text", "") for p in content)
    return None


@dataclass
class Context:
    """What a strategy may use: the served model's tokenizer and window, the request's
    chat-template flags, the engine (chain of agents calls it) and the chunk encoder."""

    tokenizer: Any
    max_model_len: int
    requested_tokens: int | None
    template_kwargs: dict
    engine: Any = None
    encoder: Any = None
    engine_args: dict | None = None
    projection: Any = None  # the RAG path's trained chunk projection (--rag-projection)

    @property
    def reserve(self) -> int:
        return self.requested_tokens or DEFAULT_RESERVE

    @property
    def room(self) -> int:
        """Prompt tokens that leave room for the completion."""
        return self.max_model_len - self.reserve

    def count(self, messages: list[dict]) -> int:
        return len(self.tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=False, **self.template_kwargs))

    def tokens(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)


def longest_message(messages: list[dict]) -> int:
    """Index of the longest text message that is not a system prompt."""
    candidates = [(len(message_text(m) or ""), i) for i, m in enumerate(messages)
                  if message_text(m) and m.get("role") not in ("system", "developer")]
    if not candidates:
        raise LongserveError("the request has no text message to shorten", param="messages")
    return max(candidates)[1]


def split_long_text(text: str, ctx: Context, head_limit: int = 256) -> tuple[str, str, str]:
    """(head, body, question) of a long message: the question is its last paragraph, the
    head its first when that is short (the instruction), the body everything between."""
    paragraphs = text.rstrip().split("\n\n")
    if len(paragraphs) < 2:
        return "", text, ""
    question = paragraphs[-1].strip()
    head = paragraphs[0] if len(paragraphs) > 2 else ""
    if head and len(ctx.tokens(head)) > head_limit:
        head = ""
    body = "\n\n".join(paragraphs[1 if head else 0:-1])
    return head, body, question


def with_content(messages: list[dict], index: int, content: str) -> list[dict]:
    out = copy.deepcopy(messages)
    out[index]["content"] = content
    return out


def join(*parts: str) -> str:
    return "\n\n".join(p for p in parts if p)


class Strategy:
    """`apply` may rewrite the request's messages before vLLM renders them and returns
    what it did (echoed as `longserve.context`); `check` runs after rendering. A
    strategy implements `fit` (or the async `shorten`): make the prompt fit by rewriting
    its longest message; it runs only for prompts that do not fit."""

    name = "base"

    async def apply(self, request, ctx: Context) -> dict:
        prompt = await asyncio.to_thread(ctx.count, request.messages)  # CPU work
        if prompt <= ctx.room:
            return {"name": self.name, "changed": False, "prompt_tokens": prompt}
        index = longest_message(request.messages)
        done = await self.shorten(request, ctx, index, prompt)
        return {"name": self.name, "changed": True, "message": index, "prompt_tokens": prompt,
                "reserved_tokens": ctx.reserve, **done}

    async def shorten(self, request, ctx: Context, index: int, prompt: int) -> dict:
        return await asyncio.to_thread(self.fit, request, ctx, index, prompt)

    def fit(self, request, ctx: Context, index: int, prompt: int) -> dict:
        raise NotImplementedError

    def check(self, *, prompt_tokens: int, requested_tokens: int | None, max_model_len: int,
              field: str) -> None:
        """Raise unless the prompt plus the requested completion (at least one token)
        fits in `max_model_len`. `field` names the request field holding the prompt."""
        completion = requested_tokens if requested_tokens is not None else 1
        if prompt_tokens + completion <= max_model_len:
            return
        asked = "" if requested_tokens is not None else " at least"
        raise ContextLengthExceeded(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested{asked} {prompt_tokens + completion} tokens ({prompt_tokens} in the "
            f"{field}, {completion} in the completion). Reduce the length of the {field} or "
            "of max_tokens, or choose another context_strategy"
            f"{'' if self.name == 'reject' else f' ({self.name} could not make it fit)'}.",
            param=field,
        )
