"""`reject` (the default): a request that does not fit the context gets a 400 that says
by how much; nothing is ever cut silently."""

from __future__ import annotations

from server.errors import ContextLengthExceeded


class Reject:
    name = "reject"

    def check(
        self,
        *,
        prompt_tokens: int,
        requested_tokens: int | None,
        max_model_len: int,
        field: str,
    ) -> None:
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
            "of max_tokens, or choose another context_strategy.",
            param=field,
        )
