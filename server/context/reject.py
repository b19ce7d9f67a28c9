"""`reject` (the default): a request that does not fit the context gets a 400 that says
by how much; nothing is ever cut silently."""

from __future__ import annotations

from server.context.base import Strategy


class Reject(Strategy):
    name = "reject"

    async def apply(self, request, ctx) -> None:
        return None  # nothing to do before rendering: vLLM counts, check() decides
