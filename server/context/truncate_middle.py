"""`truncate_middle`: keep the system prompt, every other turn, and the head and tail of
the longest message (its tail holds the question), cutting its middle by tokens until the
prompt leaves room for max_tokens (256 when the request sets none). A marker in the
prompt and the response's `longserve.context` say how many tokens went."""

from __future__ import annotations

from server.context.base import Context, Strategy, message_text, with_content
from server.errors import ContextLengthExceeded


class TruncateMiddle(Strategy):
    name = "truncate_middle"

    def fit(self, request, ctx: Context, index: int, prompt: int) -> dict:
        messages = request.messages
        ids = ctx.tokens(message_text(messages[index]))
        cut = prompt - ctx.room
        for _ in range(4):  # re-tokenizing at the seams can move the count by a few tokens
            keep = len(ids) - cut - 16  # the marker
            if keep < 2:
                raise ContextLengthExceeded(
                    f"truncate_middle cannot fit this request: without the longest message "
                    f"(messages[{index}]) the prompt still needs about {prompt - len(ids)} "
                    f"tokens of the {ctx.room} that leave room for {ctx.reserve} completion "
                    "tokens in the context; shorten the other messages or max_tokens",
                    param="messages")
            head, tail = ids[:keep - keep // 2], ids[len(ids) - keep // 2:]
            dropped = len(ids) - len(head) - len(tail)
            text = (ctx.tokenizer.decode(head) + f"\n[... {dropped} tokens left out ...]\n"
                    + ctx.tokenizer.decode(tail))
            candidate = with_content(messages, index, text)
            fitted = ctx.count(candidate)
            if fitted <= ctx.room:
                request.messages = candidate
                return {"fitted_tokens": fitted, "dropped_tokens": dropped}
            cut += fitted - ctx.room
        raise ContextLengthExceeded("truncate_middle did not converge", param="messages")
